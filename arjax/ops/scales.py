"""Scale schedules: the single source of truth for token layouts of next-scale models.

A schedule is a tuple of patch sides `patch_nums`, e.g. (1, 2, 3, 4, 5, 6, 8, 10, 13, 16); scale k
holds pn_k**2 tokens stored row-major, and scales are concatenated coarse to fine.
"""
from __future__ import annotations

import functools

import numpy as np

# The schedules of the released VAR checkpoints, keyed by image size.
VAR_SCHEDULES = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
}
# A 14-scale, 9451-token schedule for 1024 px: no released model uses it; kernel tests and benchmarks use it
# as the long-sequence case.
LONG_SCHEDULE_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


def check_schedule(patch_nums) -> tuple[int, ...]:
    """A user-given schedule as a tuple of ints, or a ValueError saying what a schedule must be."""
    pns = tuple(int(p) for p in patch_nums)
    if not pns or pns[0] != 1 or any(p <= 0 for p in pns) or list(pns) != sorted(set(pns)):
        raise ValueError(f"patch_nums must be increasing positive sides starting at 1, e.g. (1, 2, 3, 4, 6, 8); "
                         f"got {tuple(patch_nums)}")
    return pns


def scale_lens(patch_nums) -> tuple[int, ...]:
    return tuple(int(pn) ** 2 for pn in patch_nums)


def seq_len(patch_nums) -> int:
    return sum(scale_lens(patch_nums))


def begin_ends(patch_nums) -> tuple[tuple[int, int], ...]:
    """(begin, end) token offsets of every scale."""
    out, cur = [], 0
    for n in scale_lens(patch_nums):
        out.append((cur, cur + n))
        cur += n
    return tuple(out)


@functools.lru_cache(maxsize=None)
def level_ids(lens: tuple[int, ...]) -> np.ndarray:
    """The scale index of every token, shape (L,)."""
    return np.repeat(np.arange(len(lens)), lens).astype(np.int32)


def block_causal_mask(lens) -> np.ndarray:
    """Boolean (L, L): query i may attend key j iff scale(j) <= scale(i)."""
    lvl = level_ids(tuple(lens))
    return lvl[:, None] >= lvl[None, :]


def block_diagonal_mask(lens) -> np.ndarray:
    """Boolean (L, L): each scale attends only to itself (HMAR's Markovian mask)."""
    lvl = level_ids(tuple(lens))
    return lvl[:, None] == lvl[None, :]


def phi_ticks(num_phis: int) -> np.ndarray:
    # VAR places 4 partially shared phis at 1/12..11/12, any other count at bin centres.
    k = num_phis
    if k == 4:
        return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    return np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def phi_index(si: int, num_scales: int, num_phis: int) -> int:
    """Which phi conv scale `si` uses. Computed in float64: scales 2 and 7 of the 10-scale
    schedule are exact ties that float32 resolves differently from the reference."""
    if num_phis == 1:
        return 0
    at = si / (num_scales - 1)  # python float == float64, as in the reference
    return int(np.argmin(np.abs(phi_ticks(num_phis) - at)))


def infer_patch_nums(lvl_counts=None, total_len: int | None = None) -> tuple[int, ...]:
    """Recover a schedule from per-scale token counts (exact) or from a total length (known tables)."""
    if lvl_counts is not None:
        pns = []
        for n in lvl_counts:
            pn = int(round(np.sqrt(n)))
            if pn * pn != n:
                raise ValueError(f"scale with {n} tokens is not a square: cannot infer patch_nums")
            pns.append(pn)
        return tuple(pns)
    for pns in VAR_SCHEDULES.values():
        if seq_len(pns) == total_len:
            return pns
    raise ValueError(
        f"no known schedule has {total_len} tokens; pass patch_nums explicitly "
        f"(known: {', '.join(f'{k}px={v}' for k, v in VAR_SCHEDULES.items())})")
