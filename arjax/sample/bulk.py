"""Many samples for an evaluation (e.g. 50 per class x 1000 classes for FID), resumable.

Each batch is written as its own .npy under OUT.parts/ (temp file + rename, so a kill never leaves a
half-written part) and skipped when rerun; at the end the parts become one OUT.npz with `arr_0`
(N, H, W, 3) uint8 in class-major order, the format of the ADM evaluation suite VAR reports with.
Sample i draws from fold_in(key(seed), i) whatever the batch size, and each batch is split over all
local devices by `Pipeline.sample`. In a multi-process run each process samples every P-th batch into
the shared OUT.parts/ and process 0 assembles the file, so all devices of all hosts take part.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


def class_major_labels(num_classes: int, per_class: int, classes=None) -> np.ndarray:
    classes = range(num_classes) if classes is None else classes
    return np.repeat(np.asarray(list(classes), np.int64), per_class)


def sample_to_npz(pipe, labels, out, *, batch_size: int = 64, cfg: float = 1.5, top_k: int = 900,
                  top_p: float = 0.96, seed: int = 0, progress: bool = True, **options) -> Path:
    from tqdm import tqdm
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--npz {out}: the output must end in .npz")
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    import jax
    starts = range(0, len(labels), batch_size)
    mine = starts[jax.process_index()::jax.process_count()]
    todo = [s for s in mine if not (parts / f"{s:09d}.npy").exists()]
    mine_total = sum(len(labels[s:s + batch_size]) for s in mine)
    with tqdm(total=mine_total, initial=mine_total - sum(len(labels[s:s + batch_size]) for s in todo),
              desc="sampling", unit="img", disable=not progress) as bar:
        for s in todo:
            images = pipe.sample(labels[s:s + batch_size], cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                                 first_index=s, **options)
            pixels = np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)
            tmp = parts / f"{s:09d}.tmp.npy"
            np.save(tmp, pixels)
            os.replace(tmp, parts / f"{s:09d}.npy")
            bar.update(len(pixels))
    from arjax import parallel
    parallel.barrier("arjax: every process wrote its samples")
    if not parallel.is_main_process():
        return out
    arr = np.concatenate([np.load(parts / f"{s:09d}.npy") for s in starts])
    np.savez(out, arr_0=arr)
    shutil.rmtree(parts)
    return out
