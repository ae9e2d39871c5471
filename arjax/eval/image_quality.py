"""Per-image reconstruction quality: PSNR and SSIM as tokenizer papers report them.

LlamaGen-style tokenizer evaluations call scikit-image (`peak_signal_noise_ratio`,
`structural_similarity(..., channel_axis=-1)`) on each uint8 image pair and average over images, so
these follow scikit-image's defaults: SSIM with a 7 x 7 uniform window, sample (N - 1) covariances,
K1 = 0.01, K2 = 0.03, the mean taken over pixels at least 3 from the border and then over channels.
Both run batched and jitted; data_range is 255 for uint8 input.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_WIN = 7
_K1, _K2 = 0.01, 0.03


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"need two image batches of one shape (N, H, W, 3); got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN} x {_WIN} pixels; got {a.shape[1:3]}")
    return a, b


@jax.jit
def _psnr(a, b):
    mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
    return 10.0 * jnp.log10(255.0 ** 2 / mse)  # inf for identical images, as scikit-image


def _box(x):
    """Mean over every 7 x 7 window ('valid': the border pixels that scikit-image crops never appear)."""
    s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, _WIN, _WIN, 1), (1, 1, 1, 1), "VALID")
    return s / (_WIN * _WIN)


@jax.jit
def _ssim(a, b):
    n = _WIN * _WIN
    cov_norm = n / (n - 1)  # scikit-image's sample covariance
    ua, ub = _box(a), _box(b)
    # (co)variances of values centred on 128: the same numbers with less float32 cancellation
    a0, b0, ua0, ub0 = a - 128.0, b - 128.0, ua - 128.0, ub - 128.0
    vaa = cov_norm * (_box(a0 * a0) - ua0 * ua0)
    vbb = cov_norm * (_box(b0 * b0) - ub0 * ub0)
    vab = cov_norm * (_box(a0 * b0) - ua0 * ub0)
    c1, c2 = (_K1 * 255.0) ** 2, (_K2 * 255.0) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (vaa + vbb + c2))
    return jnp.mean(s, axis=(1, 2, 3))  # equal-sized channels: mean over all = mean of channel means


def psnr(images, reference) -> np.ndarray:
    """(N,) PSNR in dB of uint8 images against uint8 references (data range 255)."""
    a, b = _check_pair(images, reference)
    return np.asarray(_psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def ssim(images, reference) -> np.ndarray:
    """(N,) SSIM of uint8 images against uint8 references, scikit-image's definition (see module doc)."""
    a, b = _check_pair(images, reference)
    return np.asarray(_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
