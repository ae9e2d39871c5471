"""Block-sparse attention on TPU: JAX's splash attention kernels driven by a mask built from `scale_lens`.

Why splash and not a kernel of our own: every mask of the next-scale family is static (known from the
schedule at trace time), and splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`)
already does what a TPU kernel for such masks must: it turns a NumPy mask into per-block tables on the
host, skips empty blocks in its index maps (they are never DMA'd from HBM), computes full blocks
without the mask and applies it only on blocks the mask cuts through, has forward, dQ and dK/dV kernels
with float32 softmax statistics, and is maintained against Mosaic's tiling rules (blocks of 128 rows,
head dim as the full minor dimension, so VAR's 64 lowers). Ours (`arjax.ops.block_sparse`) loads the
whole K/V of a head per program, a GPU layout.

The sequence is padded to the block size (128); padded keys get a level no real query sees, padded
queries see every key (so no row of the softmax is empty) and are dropped. The kernel takes
(heads, L, D) per example and is vmapped over the batch; q is multiplied by `scale` first (splash has
no scale argument). `interpret=True` runs it on any backend (CPU tests check it against float64).
On TPU, bf16 inputs need the default matmul precision: Mosaic rejects bf16 matmuls at "highest"
("Bad lhs type"), e.g. under a global jax_default_matmul_precision="highest".
"""
from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np

from arjax.ops.block_sparse import check_self_attention, token_levels

BLOCK = 128  # Mosaic's tile of rows; the sequence is padded to a multiple of it


def padded_mask(mask: str, scale_lens, length: int, block: int = BLOCK) -> np.ndarray:
    """(Lp, Lp) boolean mask over the sequence padded to a multiple of `block`."""
    lp = -(-length // block) * block
    lvl = token_levels(mask, scale_lens, length)
    pad_level = np.iinfo(np.int32).max  # padded queries see everything, no real query sees padded keys
    lvl = np.concatenate([lvl, np.full(lp - length, pad_level, np.int32)])
    allowed = lvl[None, :] <= lvl[:, None]
    if mask == "block_diagonal":
        allowed = (lvl[None, :] == lvl[:, None]) | (lvl[:, None] == pad_level)
    return allowed


def blocks_visited(mask: np.ndarray, block: int = BLOCK) -> tuple[int, int]:
    """(blocks the kernel computes, blocks of the dense (Lp, Lp) score matrix)."""
    n = mask.shape[0] // block
    tiles = mask.reshape(n, block, n, block).any(axis=(1, 3))
    return int(tiles.sum()), n * n


@functools.lru_cache(maxsize=64)
def _kernel(mask: str, scale_lens: tuple | None, length: int, heads: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    m = sa.NumpyMask(padded_mask(mask, scale_lens, length, block))
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

    def build():
        kernel = sa.make_splash_mha(sa.MultiHeadMask([m] * heads), block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
        return jax.tree.map(np.asarray, kernel)  # the block tables as host constants, usable in any trace

    # make_splash_mha creates its tables with jnp.array, which inside a trace (shard_map, or a mesh of
    # ahead-of-time TPU devices) would make tracers or fail; JAX's trace and mesh contexts are
    # thread-local, so a worker thread builds it as if outside of everything.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(build).result()


def splash_attention(q, k, v, *, scale_lens=None, mask: str = "block_causal", scale: float | None = None,
                     block: int = BLOCK, interpret: bool = False):
    """q, k, v: (B, L, H, D) self-attention under a scale-structured mask -> (B, L, H, D)."""
    b, length, h, d = q.shape
    check_self_attention("splash", length, k.shape[1], mask, scale_lens)
    lens = None if scale_lens is None else tuple(int(n) for n in scale_lens)
    kernel = _kernel(mask, lens, length, h, block, bool(interpret))
    lp = -(-length // block) * block
    scale = d ** -0.5 if scale is None else scale

    def heads_first(x):  # (B, L, H, D) -> (B, H, Lp, D)
        return jnp.pad(x, ((0, 0), (0, lp - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    if scale != 1.0:
        q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    o = jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v))
    return o.transpose(0, 2, 1, 3)[:, :length]
