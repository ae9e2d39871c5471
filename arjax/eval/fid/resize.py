"""Resizing uint8 NHWC images to the FID Inception's 299 x 299 input, exactly as the two references do.

* `"pytorch-fid"`: pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: x / 255, then
  `F.interpolate(x, (299, 299), mode="bilinear", align_corners=False)` (half-pixel source coordinate
  clamped below at 0, no antialias even when downsampling, the identity at 299), then 2x - 1.
* `"tf1"`: the ADM evaluator's TF graph: TF1's legacy `resize_bilinear(float(images), [299, 299],
  align_corners=False, half_pixel_centers=False)` on [0, 255] (source = dst * in / out, upper neighbour
  clamped to in - 1), then (x - 128) / 128 (the graph's `Sub 128`, `Mul 0.0078125`).

Both are separable linear maps: `M_h @ x @ M_w^T` with (299, in) matrices built once on the host in
float64 (like arjax.ops.resample; source coordinates rounded to float32 as both references compute them)
and applied with a "highest"-precision einsum.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299
RESIZE_MODES = ("pytorch-fid", "tf1")
# Both references compute the source coordinate in float32 (scale = float(in) / out, then one product);
# doing the same moves the result by up to ~6e-4 on [0, 255] at 256 px, so the matrices reproduce it.
_F32 = np.float32


def _bilinear_matrix(n_in: int, n_out: int, source) -> np.ndarray:
    """(n_out, n_in) two-tap interpolation weights; `source(i)` is output row i's source coordinate."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = source(i)
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)          # both references clamp the upper neighbour at the edge
        frac = min(max(src - lo, 0.0), 1.0)
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


@functools.lru_cache(maxsize=None)
def torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch bilinear, align_corners=False, antialias=False: src = (i + 0.5) * in / out - 0.5, >= 0."""
    scale = _F32(n_in) / _F32(n_out)
    return _bilinear_matrix(n_in, n_out, lambda i: max(float(scale * (_F32(i) + _F32(0.5)) - _F32(0.5)), 0.0))


@functools.lru_cache(maxsize=None)
def tf1_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """TF1 legacy resize_bilinear (align_corners=False, half_pixel_centers=False): src = i * in / out."""
    scale = _F32(n_in) / _F32(n_out)
    return _bilinear_matrix(n_in, n_out, lambda i: float(_F32(i) * scale))


def _apply(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """x: (N, H, W, C) float32 -> (N, H', W', C)."""
    mh, mw = jnp.asarray(mh, jnp.float32), jnp.asarray(mw, jnp.float32)
    return jnp.einsum("oh,nhwc,pw->nopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def _resize(x, size: int, matrix) -> jax.Array:
    x = jnp.asarray(x).astype(jnp.float32)
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (size, size):      # both matrices are exactly the identity there
        return x
    return _apply(x, matrix(h, size), matrix(w, size))


def resize_bilinear_torch(x, size: int = SIZE) -> jax.Array:
    """NHWC -> (N, size, size, C) float32, identical to `F.interpolate(..., mode="bilinear")`; no scaling."""
    return _resize(x, size, torch_bilinear_matrix)


def resize_bilinear_tf1(x, size: int = SIZE) -> jax.Array:
    """NHWC -> (N, size, size, C) float32, identical to TF1's legacy `resize_bilinear`; no scaling."""
    return _resize(x, size, tf1_bilinear_matrix)


def check_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown FID resize mode {mode!r}: expected one of {RESIZE_MODES} ('pytorch-fid' "
                         f"matches pytorch-fid / the .pth weights, 'tf1' the ADM evaluator's TF graph)")
    return mode


def inception_input(images, mode: str = "pytorch-fid") -> jax.Array:
    """uint8 (N, H, W, 3) -> the network's float32 (N, 299, 299, 3) input, roughly in [-1, 1]."""
    check_mode(mode)
    x = jnp.asarray(images).astype(jnp.float32)
    if mode == "pytorch-fid":
        return 2.0 * resize_bilinear_torch(x / 255.0) - 1.0
    return (resize_bilinear_tf1(x) - 128.0) * (1.0 / 128.0)
