"""Image transforms on uint8 (H, W, 3) arrays, VAR's recipe included.

VAR (build_dataset in the official code) trains on: Resize(round(1.125 * S), LANCZOS) of the shorter
side, RandomCrop(S), RandomHorizontalFlip, then [0, 1] -> [-1, 1]; it evaluates with the same resize
and a CenterCrop(S). Geometry follows torchvision so crops match the reference pipeline.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

VAR_RESIZE_RATIO = 1.125


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side -> `size` with LANCZOS; longer side int(size * long / short), as torchvision."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top:top + size, left:left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return image[top:top + size, left:left + size]


def var_train_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Resize to round(1.125 S), random S crop, horizontal flip with p = 0.5 (draws: flip, top, left)."""
    flip = rng.random() < 0.5
    image = random_crop(resize_shorter(image, round(size * VAR_RESIZE_RATIO)), size, rng)
    return np.ascontiguousarray(image[:, ::-1] if flip else image)


def var_eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(center_crop(resize_shorter(image, round(size * VAR_RESIZE_RATIO)), size))


def fit_transform(image: np.ndarray, size: int) -> np.ndarray:
    """No augmentation: an S x S image passes untouched, anything else is resized and centre-cropped."""
    if image.shape[:2] == (size, size):
        return image
    return np.ascontiguousarray(center_crop(resize_shorter(image, size), size))


def to_pm1(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1 and 255 -> 1 exactly)."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
