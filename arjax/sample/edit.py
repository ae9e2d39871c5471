"""Zero-shot editing masks: which tokens of each scale are known, and the CLI's mask and image files.

A region to regenerate is a boolean pixel mask (True = regenerate). At every scale a token is known,
and teacher-forced to the source's token, when its cell holds no masked pixel. The cells are the
windows of PyTorch's area resize (`arjax.ops.resample.area_matrix`), the same windows the tokenizer
pools with, so a known token never summarises a masked pixel.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from arjax.ops.resample import area_matrix


def check_mask(mask, shape) -> np.ndarray:
    """mask (H, W) or (B, H, W), any dtype (nonzero = regenerate) -> bool (B, H, W) for images of `shape`
    (B, H, W)."""
    m = np.asarray(mask)
    b, h, w = shape
    if m.ndim == 2:
        m = np.broadcast_to(m, (b, *m.shape))
    if m.ndim != 3 or m.shape[1:] != (h, w) or m.shape[0] != b:
        raise ValueError(f"the edit mask must have shape ({h}, {w}) or ({b}, {h}, {w}) like the images; got {m.shape}")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("the edit mask selects no pixel: nothing to regenerate")
    return m


def known_tokens(mask: np.ndarray, patch_nums) -> np.ndarray:
    """bool (B, H, W) regenerate-mask -> bool (B, L): tokens whose cell has no masked pixel, scales
    concatenated coarse to fine, row-major."""
    b, h, w = mask.shape
    out = []
    for pn in patch_nums:
        # a cell touches the region iff its area-average of the mask is positive
        touched = np.einsum("oh,bhw,pw->bop", area_matrix(h, pn) > 0, mask.astype(np.float64), area_matrix(w, pn) > 0)
        out.append((touched == 0).reshape(b, pn * pn))
    return np.concatenate(out, axis=1)


_BOX = re.compile(r"^box:(-?\d+),(-?\d+),(-?\d+),(-?\d+)$")


def parse_mask(spec: str, size: int) -> np.ndarray:
    """`box:x0,y0,x1,y1` (pixels of the size x size model image, x1/y1 exclusive) or a PNG whose
    white (> 127) pixels are regenerated (resized to the model size) -> bool (size, size). A leading
    `~` inverts it: `~box:8,8,24,24` keeps the box and regenerates the rest (outpainting)."""
    if spec.startswith("~"):
        return ~parse_mask(spec[1:], size)
    if m := _BOX.match(spec.strip()):
        x0, y0, x1, y1 = (int(v) for v in m.groups())
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ValueError(f"--mask {spec}: the box must satisfy 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size} "
                             f"(pixels of the {size}x{size} model image)")
        mask = np.zeros((size, size), bool)
        mask[y0:y1, x0:x1] = True
        return mask
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--mask {spec!r} is neither box:x0,y0,x1,y1 nor an existing image file")
    from PIL import Image
    with Image.open(path) as im:
        g = np.asarray(im.convert("L").resize((size, size), Image.NEAREST))
    return g > 127


def load_image(path, size: int) -> np.ndarray:
    """An image file -> (size, size, 3) float32 in [-1, 1]: centre-cropped to a square, then resized."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            s = min(im.size)
            left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
            return np.asarray(im, np.float32) / 127.5 - 1.0
    except OSError as e:
        raise ValueError(f"cannot read the image {path}: {e}") from None


def before_after(source: np.ndarray, mask: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """A row [source | source with the region greyed out | edited] as uint8 (H, 3W (+gaps), 3).
    source in [-1, 1], edited in [0, 1], mask True where regenerated."""
    src = (np.clip(source, -1, 1) + 1) / 2
    shown = np.where(mask[..., None], 0.5 * src + 0.25, src)
    gap = np.ones((src.shape[0], 2, 3))
    row = np.concatenate([src, gap, shown, gap, np.clip(edited, 0, 1)], axis=1)
    return (row * 255 + 0.5).astype(np.uint8)
