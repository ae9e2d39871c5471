"""Zero-shot editing masks: which tokens of each scale are known, and the CLI's mask and image files.

The rule is the official VAR demo's (`demo_zero_shot_edit.ipynb`: `get_edit_mask` + the masked
`autoregressive_infer_cfg`), checked token for token against the `var_tiny` fixture's `R_forced`:

1. The demo's mask is a *keep* mask on the finest token grid (pn_K x pn_K, 16 x 16 for VAR-256): 1 where
   the source token is kept. Here the user gives a pixel mask, True = regenerate. A finest-scale token is
   kept iff its cell (the tokenizer's PyTorch area window, `arjax.ops.resample.area_matrix`) holds no
   pixel to regenerate: any marked pixel regenerates its whole token. For a mask drawn on whole tokens
   (a box on multiples of the downsampling factor) this is exactly the demo's grid mask; otherwise the
   region grows to whole tokens, so no pixel asked for is kept. (`get_edit_mask` itself rounds a
   fractional box to the grid: `round(y0 * pn_K)` .. `round(y1 * pn_K)`.)
2. At every scale pn the keep grid is resized to pn x pn with PyTorch's
   `F.interpolate(mode="bilinear", align_corners=False)` (two taps, no area averaging, float32 as
   PyTorch's CPU kernel rounds it: `arjax.ops.resample.bilinear_resize_np`) and a token is known where
   the result is > 0.5 (exactly 0.5, e.g. a token straddling the border at pn = 8, is regenerated).
3. At scales of at most 3 tokens (pn * pn <= 3: the 1 x 1 scale) every token is known, whatever the
   mask. The coarsest scale therefore always carries the source's global content (its mean colour), for
   outpainting too.

Known tokens are teacher-forced by the sampler (`forced_tokens` / `forced_mask`): the source token's
code replaces the drawn one before the f-hat update, which is what the demo does with the embeddings.
A known token may therefore summarise some pixels of the region (rule 2 forces a coarse token that is
mostly kept), unlike the former "cell touches no masked pixel" rule, which regenerated the whole coarse
pyramid for any central box and lost the kept region's colours.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from arjax.ops.resample import area_matrix, bilinear_resize_np


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


def keep_grid(mask: np.ndarray, n: int) -> np.ndarray:
    """bool (B, H, W) regenerate-mask -> float32 (B, n, n) keep grid at the finest scale n: 1 where the
    token's area window holds no pixel to regenerate (rule 1 of the module docstring)."""
    _, h, w = mask.shape
    touched = np.einsum("oh,bhw,pw->bop", area_matrix(h, n) > 0, mask.astype(np.float64), area_matrix(w, n) > 0)
    return (touched == 0).astype(np.float32)


def known_from_keep_grid(keep: np.ndarray, patch_nums) -> np.ndarray:
    """float (B, n, n) keep grid at the finest scale (the demo's `get_edit_mask`, 1 = keep) -> bool (B, L)
    known tokens, scales concatenated coarse to fine, row-major (rules 2 and 3)."""
    keep = np.asarray(keep, np.float32)
    out = []
    for pn in patch_nums:
        if pn * pn <= 3:
            k = np.ones((keep.shape[0], pn, pn), bool)
        else:
            k = bilinear_resize_np(keep, pn) > 0.5
        out.append(k.reshape(keep.shape[0], pn * pn))
    return np.concatenate(out, axis=1)


def known_tokens(mask: np.ndarray, patch_nums) -> np.ndarray:
    """bool (B, H, W) regenerate-mask -> bool (B, L): the tokens teacher-forced to the source's, scales
    concatenated coarse to fine, row-major (the official demo's rule, see the module docstring)."""
    return known_from_keep_grid(keep_grid(np.asarray(mask, bool), patch_nums[-1]), patch_nums)


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


def _erode(m: np.ndarray) -> np.ndarray:
    """4-neighbour erosion, pixels beyond the edge counted as outside."""
    p = np.pad(m, 1, constant_values=False)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def before_after(source: np.ndarray, mask: np.ndarray, edited: np.ndarray, min_size: int = 256) -> np.ndarray:
    """A row [source | source with the regenerated region marked | edited] as uint8 (s*H, 3*s*W + 2 gaps, 3).
    source in [-1, 1], edited in [0, 1], mask (H, W) True where regenerated.

    Small model images are enlarged by the integer factor s = ceil(min_size / max(H, W)) (nearest
    neighbour: every model pixel stays a sharp block). In the middle panel the region is the source
    dimmed under diagonal black and white hatching, outlined by a black and white dashed line, so it
    shows on any colour."""
    src = (np.clip(source, -1, 1) + 1) / 2
    s = max(1, -(-min_size // max(src.shape[0], src.shape[1])))
    up = lambda a: np.repeat(np.repeat(a, s, axis=0), s, axis=1)  # noqa: E731
    src, m, out = up(src), up(np.asarray(mask, bool)), up(np.clip(edited, 0, 1))
    yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
    period = max(4, s)
    stripe = ((yy + xx) % period < period // 2).astype(np.float64)[..., None]  # diagonal hatching, 0 / 1
    shown = np.where(m[..., None], 0.5 * src + 0.5 * stripe, src)
    inner = m
    for _ in range(max(1, s // 4)):
        inner = _erode(inner)
    dash = (((yy // period) + (xx // period)) % 2).astype(np.float64)[..., None]  # black / white dashes
    shown = np.where((m & ~inner)[..., None], dash, shown)
    gap = np.ones((src.shape[0], max(2, s), 3))
    row = np.concatenate([src, gap, shown, gap, out], axis=1)
    return (row * 255 + 0.5).astype(np.uint8)
