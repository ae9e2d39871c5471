"""The one attention entry point used by every model.

`impl="xla"` is the dense reference: explicit boolean mask, float32 softmax. It is the oracle the
block-sparse kernels are tested against, and what "auto" picks. `impl="pallas"` is the block-sparse
flash kernel of `arjax.ops.block_sparse` (run interpreted on CPU); on one H100 it made a VAR-d16
training step 1.7x faster (benchmarks/RESULTS.md), but it is not "auto" yet: it has no partitioning
rule for multi-device meshes and has not been compiled for a TPU; KV-cached steps, where queries see every
cached key and no mask applies, always take the dense path. With "auto"/"xla", block-diagonal masks
(HMAR) run dense attention per scale on static slices: no L x L scores, and it equals the masked result.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arjax.ops import scales

MASKS = ("block_causal", "block_diagonal", "causal", "none")
IMPLS = ("auto", "xla", "pallas")


def build_mask(mask: str, scale_lens, q_len: int, k_len: int) -> np.ndarray | None:
    """Host-side boolean (q_len, k_len) mask, or None for no mask."""
    if mask == "none":
        return None
    if mask == "causal":  # with a KV cache the queries are the last q_len positions
        return np.tril(np.ones((q_len, k_len), bool), k_len - q_len)
    if q_len != k_len:  # next-scale KV-cached steps see everything cached: they pass mask="none"
        raise ValueError(f"mask={mask!r} needs as many queries as keys; got {q_len} and {k_len}")
    if scale_lens is None:
        raise ValueError(f"mask={mask!r} needs scale_lens")
    if sum(scale_lens) != q_len:
        raise ValueError(f"scale_lens sum to {sum(scale_lens)} tokens but the sequence has {q_len}")
    return {"block_causal": scales.block_causal_mask,
            "block_diagonal": scales.block_diagonal_mask}[mask](tuple(scale_lens))


def dense_attention(q, k, v, mask=None, *, scale: float | None = None):
    """q: (B, Lq, H, D), k/v: (B, Lk, H, D), mask: bool broadcastable to (B, H, Lq, Lk)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(q.dtype)


def attention(q, k, v, *, scale_lens=None, mask: str = "block_causal", impl: str = "auto",
              scale: float | None = None, interpret: bool = False):
    """q, k, v: (B, L, H, D); `scale_lens` tokens per scale; returns (B, Lq, H, D).

    `scale=None` means 1/sqrt(D). `interpret` runs the Pallas kernel in interpret mode (always on CPU).
    """
    if mask not in MASKS:
        raise ValueError(f"attention mask must be one of {MASKS}, got {mask!r}")
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "pallas" and q.shape[1] == k.shape[1]:
        from arjax.ops.block_sparse import block_sparse_attention
        return block_sparse_attention(q, k, v, scale_lens=scale_lens, mask=mask, scale=scale,
                                      interpret=interpret or jax.default_backend() == "cpu")
    if mask == "block_diagonal":
        return per_scale_attention(q, k, v, scale_lens, scale=scale)
    m = build_mask(mask, scale_lens, q.shape[1], k.shape[1])
    return dense_attention(q, k, v, None if m is None else jnp.asarray(m), scale=scale)


def per_scale_attention(q, k, v, scale_lens, *, scale: float | None = None):
    """Block-diagonal attention as one dense attention per scale (static slices), concatenated: the
    cost is sum(n_k^2) instead of L^2, the result that of the masked dense softmax."""
    if q.shape[1] != k.shape[1] or scale_lens is None or sum(scale_lens) != q.shape[1]:
        build_mask("block_diagonal", scale_lens, q.shape[1], k.shape[1])  # raises the usual error
    outs, s = [], 0
    for n in scale_lens:
        outs.append(dense_attention(q[:, s:s + n], k[:, s:s + n], v[:, s:s + n], scale=scale))
        s += n
    return jnp.concatenate(outs, axis=1)
