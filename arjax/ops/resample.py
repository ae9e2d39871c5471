"""PyTorch-exact 2D resampling as separable matrices.

`jax.image.resize` does not reproduce `F.interpolate(mode="area")` (adaptive average pooling with
overlapping windows) nor PyTorch's bicubic (A = -0.75, unclamped source coordinate, border-clamped
taps), and VAR's tokens depend on both. Each resize is `M_h @ x @ M_w^T` with matrices built once
on the host in float64.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) adaptive-average-pooling weights: window i = [floor(i*n/m), ceil((i+1)*n/m))."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        lo = (i * n_in) // n_out
        hi = -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch bicubic, align_corners=False."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = scale * (i + 0.5) - 0.5  # not clamped for cubic
        base = math.floor(src)
        for off, w in zip(range(-1, 3), _cubic_weights(src - base)):
            m[i, min(max(base + off, 0), n_in - 1)] += w
    return m


def _apply(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """x: (..., H, W, C) -> (..., H', W', C)."""
    mh = jnp.asarray(mh, x.dtype)
    mw = jnp.asarray(mw, x.dtype)
    return jnp.einsum("oh,...hwc,pw->...opc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def resize_area(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """NHWC area resize, identical to `F.interpolate(..., mode="area")`."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-3], x.shape[-2]
    if (oh, ow) == (h, w):
        return x
    return _apply(x, area_matrix(h, oh), area_matrix(w, ow))


def resize_bicubic(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """NHWC bicubic resize, identical to `F.interpolate(..., mode="bicubic")` (align_corners=False)."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-3], x.shape[-2]
    if (oh, ow) == (h, w):
        return x
    return _apply(x, bicubic_matrix(h, oh), bicubic_matrix(w, ow))
