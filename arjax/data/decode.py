"""Record -> RGB uint8 (H, W, 3) image, or None when the image cannot be read.

A corrupt or truncated file in a million-image folder must not kill a training run: it is logged,
counted in SKIPPED, and the pipeline drops it. The count is per process (grain worker processes,
if used, keep their own); the log line names the file either way.
"""
from __future__ import annotations

import collections
import io
import logging
import threading

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class SkipCounter:
    """Thread-safe count of skipped images plus the most recent offenders, for a run summary."""

    def __init__(self, keep_recent: int = 100):
        self._lock = threading.Lock()
        self.count = 0
        self.recent = collections.deque(maxlen=keep_recent)

    def add(self, where: str, error: Exception) -> None:
        with self._lock:
            self.count += 1
            self.recent.append(where)
            count = self.count
        log.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                    where, type(error).__name__, error, count)

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.recent.clear()


SKIPPED = SkipCounter()


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Grey (H, W) / (H, W, 1) and RGBA (H, W, 4) uint8 arrays -> (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"decoded images must be uint8; got {image.dtype} with shape {image.shape}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _read_pil(file, where: str) -> np.ndarray | None:
    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))  # convert() forces the full decode inside the try
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        SKIPPED.add(where, error)
        return None


def decode_image(record: dict) -> np.ndarray | None:
    """{"path": file} or {"image": encoded bytes | uint8 array} -> RGB uint8 array, None if unreadable."""
    if "path" in record:
        path = str(record["path"])
        return _read_pil(path, path)
    image = record["image"]
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _read_pil(io.BytesIO(image), f"<{len(image)} encoded bytes, label {record.get('label')}>")
    return as_rgb(image)
