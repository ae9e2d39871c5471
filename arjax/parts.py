"""Long work in batches that survives a kill: each batch's result is one file in a parts folder.

A batch's file is written under a temporary name and renamed, so a kill never leaves a half-written
part; a rerun skips the batches whose file exists, so at most the batch in flight is lost. In a
multi-process run process p takes every P-th batch (all devices of all hosts take part) and the
parts folder must be shared; `run_parts` returns after every process has written its batches.
Used by `arjax sample --npz` (images) and `arjax eval fid` (Inception features).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np


def batch_starts(total: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    return range(0, total, batch_size)


def part_path(parts: Path, start: int) -> Path:
    return Path(parts) / f"{start:09d}.npz"


def run_parts(parts, total: int, batch_size: int, compute: Callable[[int, int], dict], *, desc: str,
              unit: str = "img", progress: bool = True) -> list[Path]:
    """Call `compute(start, stop) -> {name: array}` for every batch [start, stop) of range(total) whose
    part is missing, this process's share only, and save each result; returns all parts in order."""
    import jax
    from tqdm import tqdm

    from arjax import parallel
    parts = Path(parts)
    parts.mkdir(parents=True, exist_ok=True)
    starts = batch_starts(total, batch_size)
    mine = starts[jax.process_index()::jax.process_count()]
    size = lambda s: min(batch_size, total - s)  # noqa: E731
    todo = [s for s in mine if not part_path(parts, s).exists()]
    mine_total = sum(size(s) for s in mine)
    with tqdm(total=mine_total, initial=mine_total - sum(size(s) for s in todo), desc=desc, unit=unit,
              disable=not progress) as bar:
        for s in todo:
            arrays = compute(s, s + size(s))
            tmp = parts / f"{s:09d}.tmp.npz"
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the name
                np.savez(f, **arrays)
            os.replace(tmp, part_path(parts, s))
            bar.update(size(s))
    parallel.barrier(f"arjax: every process wrote its parts of {parts.name}")
    return [part_path(parts, s) for s in starts]


def load_part(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
