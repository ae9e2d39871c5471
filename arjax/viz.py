"""Image grids a person can look at: one row per class, the class written at the row's start."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images) -> np.ndarray:
    """(B, H, W, 3) float in [0, 1] -> uint8; uint8 images pass unchanged."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def labelled_grid(images, labels, *, per_row: int, class_names=None, row_names=None, pad: int = 2,
                  label_width: int = 140) -> Image.Image:
    """Rows of `per_row` images; each row titled by its first image's class (or by `row_names`)."""
    imgs = to_uint8(images)
    if labels is None and row_names is None:
        label_width = 0  # nothing to write at the rows' start
    k = max(1, 96 // imgs.shape[1])  # small images are shown enlarged (nearest neighbour)
    imgs = np.repeat(np.repeat(imgs, k, axis=1), k, axis=2)
    b, h, w, _ = imgs.shape
    rows = -(-b // per_row)
    canvas = Image.new("RGB", (label_width + per_row * (w + pad) + pad, rows * (h + pad) + pad), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i in range(b):
        r, c = divmod(i, per_row)
        y0 = pad + r * (h + pad)
        canvas.paste(Image.fromarray(imgs[i]), (label_width + pad + c * (w + pad), y0))
        if c == 0 and row_names is not None:
            draw.text((4, y0 + h // 2 - 6), str(row_names[r]), fill="black", font=font)
        elif c == 0 and labels is not None:
            lab = int(labels[i])
            name = class_names[lab] if class_names is not None and lab < len(class_names) else None
            draw.text((4, y0 + h // 2 - 12), f"class {lab}", fill="black", font=font)
            if name:
                draw.text((4, y0 + h // 2 + 2), str(name)[:22], fill="black", font=font)
    return canvas


def save_grid(path, images, labels=None, *, per_row: int, class_names=None, row_names=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, labels, per_row=per_row, class_names=class_names, row_names=row_names).save(path)
    return path
