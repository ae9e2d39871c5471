"""An independent float64 NumPy LPIPS-VGG ("v0.1" linear layers), straight from torch-layout state dicts.

Written from the LPIPS paper's definition and the torchvision vgg16 module layout; never imports arjax.
`vgg` is the torchvision vgg16 state dict (`features.{i}.weight` as (O, I, 3, 3), `features.{i}.bias`),
`lin` the lpips lin state dict (`lin{k}.model.1.weight` as (1, C, 1, 1)). Images are in [-1, 1].
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])
# torchvision's VGG16 config "D": conv widths, "M" = 2x2 max-pool; each conv is followed by a ReLU.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAP_AFTER = {3, 8, 15, 22, 29}      # torchvision indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def vgg16_layers():
    """[(torchvision index, kind)] for vgg16.features, kind in {"conv", "relu", "pool"}."""
    out = []
    for v in VGG16_CFG:
        out += [(len(out), "pool")] if v == "M" else [(len(out), "conv"), (len(out) + 1, "relu")]
    return out


def conv3x3(x, w, b):
    """NCHW x, OIHW w, stride 1, zero padding 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))             # (B, C, H, W, 3, 3)
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))          # (B, H, W, O)
    return y.transpose(0, 3, 1, 2) + b[None, :, None, None]


def max_pool2(x):
    b, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def vgg16_taps(x, vgg):
    taps = []
    for i, kind in vgg16_layers():
        if kind == "conv":
            x = conv3x3(x, np.float64(vgg[f"features.{i}.weight"]), np.float64(vgg[f"features.{i}.bias"]))
        elif kind == "relu":
            x = np.maximum(x, 0.0)
            if i in TAP_AFTER:
                taps.append(x)
                if len(taps) == len(TAP_AFTER):
                    break
        else:
            x = max_pool2(x)
    return taps


def lpips(x, y, vgg, lin, *, nhwc: bool = False):
    """LPIPS distance (B,) between image batches x, y (NCHW, or NHWC with nhwc=True)."""
    x, y = np.float64(x), np.float64(y)
    if nhwc:
        x, y = x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2)
    scale = lambda im: (im - SHIFT[None, :, None, None]) / SCALE[None, :, None, None]
    total = np.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(vgg16_taps(scale(x), vgg), vgg16_taps(scale(y), vgg))):
        fx = fx / (np.sqrt(np.sum(fx ** 2, axis=1, keepdims=True)) + 1e-10)
        fy = fy / (np.sqrt(np.sum(fy ** 2, axis=1, keepdims=True)) + 1e-10)
        w = np.float64(lin[f"lin{k}.model.1.weight"])[0, :, 0, 0]   # (C,)
        total += np.einsum("bchw,c->b", (fx - fy) ** 2, w) / (fx.shape[2] * fx.shape[3])
    return total
