"""Many samples for an evaluation (e.g. 50 per class x 1000 classes for FID), resumable.

Batches are written as parts under OUT.parts/ (arjax.parts: a kill loses at most the batch in flight,
every process of a multi-process run takes its share); at the end process 0 joins them into one
OUT.npz with `arr_0` (N, H, W, 3) uint8 in class-major order, the format of the ADM evaluation suite
VAR reports with. Sample i draws from fold_in(key(seed), i) whatever the batch size, and each batch is
split over all local devices by `Pipeline.sample`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from arjax import parts as parts_lib


def class_major_labels(num_classes: int, per_class: int, classes=None) -> np.ndarray:
    classes = range(num_classes) if classes is None else classes
    return np.repeat(np.asarray(list(classes), np.int64), per_class)


def to_pixels(images01) -> np.ndarray:
    """Samples in [0, 1] -> uint8, rounded to nearest (what gets scored and written)."""
    return np.clip(np.round(np.asarray(images01) * 255), 0, 255).astype(np.uint8)


def sample_pixels(pipe, labels, start: int, stop: int, *, cfg: float, top_k: int, top_p: float, seed: int,
                  **options) -> np.ndarray:
    """uint8 samples of labels[start:stop], sample i from fold_in(key(seed), i)."""
    images = pipe.sample(labels[start:stop], cfg=cfg, top_k=top_k, top_p=top_p, seed=seed, first_index=start,
                         **options)
    return to_pixels(images)


def sample_to_npz(pipe, labels, out, *, batch_size: int = 64, cfg: float = 1.5, top_k: int = 900,
                  top_p: float = 0.96, seed: int = 0, progress: bool = True, **options) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--npz {out}: the output must end in .npz")
    parts = out.with_name(out.name + ".parts")
    files = parts_lib.run_parts(
        parts, len(labels), batch_size, progress=progress, desc="sampling",
        compute=lambda s, e: {"images": sample_pixels(pipe, labels, s, e, cfg=cfg, top_k=top_k, top_p=top_p,
                                                      seed=seed, **options)})
    from arjax import parallel
    if not parallel.is_main_process():
        return out
    np.savez(out, arr_0=np.concatenate([parts_lib.load_part(f)["images"] for f in files]))
    shutil.rmtree(parts)
    return out
