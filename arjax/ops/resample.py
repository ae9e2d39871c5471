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


@functools.lru_cache(maxsize=None)
def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's two linear taps per output index for `F.interpolate(mode="bilinear",
    align_corners=False)` without antialiasing: (i0, i1) int64 and their weights (w0, w1) float32, each
    (n_out,), computed in float32 in PyTorch's CPU order so that thresholds on the result round alike.

    scale = n_in / n_out; source x = scale * (i + 0.5) - 0.5, clamped at 0 (not at the top); i0 =
    min(floor(x), n_in - 1), i1 = min(i0 + 1, n_in - 1); w1 = clip(x - i0, 0, 1), w0 = 1 - w1. Equal sizes
    copy (w0 = 1). Downsampling takes the same two taps (no area averaging)."""
    f32 = np.float32
    i = np.arange(n_out)
    if n_in == n_out:
        return i, i, np.ones(n_out, f32), np.zeros(n_out, f32)
    scale = f32(n_in) / f32(n_out)
    src = np.maximum(scale * (i.astype(f32) + f32(0.5)) - f32(0.5), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (f32(1) - w1).astype(f32), w1


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch bilinear, align_corners=False (see `bilinear_taps`)."""
    i0, i1, w0, w1 = bilinear_taps(n_in, n_out)
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), w0.astype(np.float64))
    np.add.at(m, (np.arange(n_out), i1), w1.astype(np.float64))
    return m


def resize_bilinear(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """NHWC bilinear resize, `F.interpolate(..., mode="bilinear", align_corners=False)` (no antialias),
    up to float rounding order (`bilinear_resize_np` reproduces PyTorch's CPU rounding)."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-3], x.shape[-2]
    if (oh, ow) == (h, w):
        return x
    return _apply(x, bilinear_matrix(h, oh), bilinear_matrix(w, ow))


def bilinear_resize_np(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Host float32 bilinear resize of (..., H, W) maps, rounded as PyTorch's CPU kernel rounds for a
    single-channel float32 input (`F.interpolate(x[:, None], size, mode="bilinear",
    align_corners=False)`): per output pixel, w00 = wh0 * ww0 etc. in float32, then
    x00 * w00 + x01 * w01 + x10 * w10 + x11 * w11 summed left to right in float32. This matters only
    for thresholds on exact ties (editing masks compare with 0.5)."""
    oh, ow = (size, size) if isinstance(size, int) else size
    x = np.asarray(x, np.float32)
    h0, h1, a0, a1 = bilinear_taps(x.shape[-2], oh)
    v0, v1, b0, b1 = bilinear_taps(x.shape[-1], ow)
    a0, a1 = a0[:, None], a1[:, None]
    out = (x[..., h0[:, None], v0[None]] * (a0 * b0[None]) + x[..., h0[:, None], v1[None]] * (a0 * b1[None]))
    out = out + x[..., h1[:, None], v0[None]] * (a1 * b0[None])
    out = out + x[..., h1[:, None], v1[None]] * (a1 * b1[None])
    return out.astype(np.float32)
