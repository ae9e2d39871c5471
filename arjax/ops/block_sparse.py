"""Block-sparse flash attention in Pallas for scale-structured masks, forward and backward.

Every mask the next-scale family uses is a rule on per-token "levels": block-causal (VAR) lets query i
see key j iff level(j) <= level(i), block-diagonal (HMAR) iff level(j) == level(i); causal is
block-causal with level = position, "none" is block-causal with one level. The keys a block of
queries can see therefore form one contiguous range, and so do the queries that can see a block of
keys: the host computes these ranges per block (`block_tables`), and the kernels loop only over
them, so empty blocks are never loaded; only blocks the mask cuts through apply the level rule, full
blocks skip it.

Sequences are padded to the block size; padded keys get a level no query accepts and padded query rows
are dropped. Softmax statistics and accumulators are float32 for bf16 and float32 inputs.

The kernels are written once against `pl.pallas_call` with whole-sequence K/V blocks per (batch x head)
program and dynamic slices inside (the layout of JAX's Pallas GPU flash-attention example); `interpret`
runs them on any backend, which is how CPU tests check them against a float64 reference. On GPU they
compile through Triton (the same tests pass compiled on an H100).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

PAD_Q, PAD_K = -2, 2 ** 30  # levels of padded rows/columns: no query sees a padded key


# ---- host-side tables --------------------------------------------------------------------------------
def token_levels(mask: str, scale_lens, length: int) -> np.ndarray:
    if mask == "causal":
        return np.arange(length, dtype=np.int32)
    if mask == "none":
        return np.zeros(length, np.int32)
    return np.repeat(np.arange(len(scale_lens)), scale_lens).astype(np.int32)


def _allowed(q_lvl, k_lvl, diagonal: bool):
    return (k_lvl == q_lvl) if diagonal else (k_lvl <= q_lvl)


def block_tables(q_lvl: np.ndarray, k_lvl: np.ndarray, block_q: int, block_k: int, diagonal: bool):
    """Per query block the [lo, hi) range of key blocks it must visit, per key block the range of query
    blocks, and per (query block, key block) whether the mask cuts through it (1) or it is full (0);
    levels are padded already. An empty range (lo == hi) skips the block entirely."""
    allowed = _allowed(q_lvl[:, None], k_lvl[None, :], diagonal)
    nq, nk = len(q_lvl) // block_q, len(k_lvl) // block_k
    tiles = allowed.reshape(nq, block_q, nk, block_k)
    blocks = tiles.any(axis=(1, 3))  # (nq, nk) non-empty blocks
    partial = (blocks & ~tiles.all(axis=(1, 3))).astype(np.int32)  # only these need the mask

    def ranges(b):
        lo = np.where(b.any(1), b.argmax(1), 0)
        hi = np.where(b.any(1), b.shape[1] - b[:, ::-1].argmax(1), 0)
        return lo.astype(np.int32), hi.astype(np.int32)
    kv_lo, kv_hi = ranges(blocks)
    q_lo, q_hi = ranges(blocks.T)
    return kv_lo, kv_hi, q_lo, q_hi, partial


# ---- kernels -------------------------------------------------------------------------------------------
def _scores(q, k, ql, kl, scale, diagonal, partial):
    """Scaled q k^T in float32; the level mask is applied only where the block is partial."""
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    return jax.lax.cond(partial != 0, lambda: jnp.where(_allowed(ql[:, None], kl[None, :], diagonal), s, -jnp.inf),
                        lambda: s)


def _fwd_kernel(lo_ref, hi_ref, part_ref, ql_ref, kl_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, bk,
                diagonal):
    qi = pl.program_id(1)
    q, ql = q_ref[...], ql_ref[...]
    bq, d = q.shape

    def body(kb, carry):
        m, l, acc = carry
        sl = pl.ds(kb * bk, bk)
        s = _scores(q, k_ref[sl, :], ql, kl_ref[sl], scale, diagonal, part_ref[qi, kb])
        m_new = jnp.maximum(m, s.max(axis=1))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing seen yet stay at zero
        p = jnp.exp(s - shift[:, None])
        alpha = jnp.exp(m - shift)
        pv = jax.lax.dot(p.astype(v_ref.dtype), v_ref[sl, :], preferred_element_type=jnp.float32)
        return m_new, alpha * l + p.sum(axis=1), alpha[:, None] * acc + pv

    init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32), jnp.zeros((bq, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(lo_ref[qi], hi_ref[qi], body, init)
    seen = l > 0  # padded query rows see nothing
    o_ref[...] = jnp.where(seen[:, None], acc / jnp.where(seen, l, 1.0)[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)


def _dq_kernel(lo_ref, hi_ref, part_ref, ql_ref, kl_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               scale, bk, diagonal):
    qi = pl.program_id(1)
    q, ql, do = q_ref[...], ql_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(kb, dq):
        sl = pl.ds(kb * bk, bk)
        k = k_ref[sl, :]
        p = jnp.exp(_scores(q, k, ql, kl_ref[sl], scale, diagonal, part_ref[qi, kb]) - lse[:, None])
        dp = jax.lax.dot_general(do, v_ref[sl, :], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        return dq + jax.lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    dq = jax.lax.fori_loop(lo_ref[qi], hi_ref[qi], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, part_ref, ql_ref, kl_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                scale, bq, diagonal):
    k, v, kl = k_ref[...], v_ref[...], kl_ref[...]
    ki = pl.program_id(1)

    def body(qb, carry):
        dk, dv = carry
        sl = pl.ds(qb * bq, bq)
        q, do = q_ref[sl, :], do_ref[sl, :]
        p = jnp.exp(_scores(q, k, ql_ref[sl], kl, scale, diagonal, part_ref[qb, ki]) - lse_ref[sl][:, None])
        dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[sl][:, None])
        dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(lo_ref[ki], hi_ref[ki], body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ---- wrapper -------------------------------------------------------------------------------------------
def _full(shape):
    return pl.BlockSpec(shape, lambda b, i: (0,) * len(shape))


def _per_head(block_len, d, i_blocks: bool):
    """(BH, Lp, D) arrays: one program's rows, either its own block (i_blocks) or the whole sequence."""
    if i_blocks:
        return pl.BlockSpec((None, block_len, d), lambda b, i: (b, i, 0))
    return pl.BlockSpec((None, block_len, d), lambda b, i: (b, 0, 0))


def _row_stats(block_len, i_blocks: bool):
    if i_blocks:
        return pl.BlockSpec((None, block_len), lambda b, i: (b, i))
    return pl.BlockSpec((None, block_len), lambda b, i: (b, 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, static):
    return _forward(q, k, v, static)[0]


def _forward(q, k, v, static):
    scale, bq, bk, diagonal, tables, q_lvl, k_lvl, interpret = static.unpack()
    bh, lp, d = q.shape
    kv_lo, kv_hi, _, _, partial = tables
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, bk=bk, diagonal=diagonal),
        grid=(bh, lp // bq),
        in_specs=[_full((len(kv_lo),)), _full((len(kv_hi),)), _full(partial.shape), pl.BlockSpec((bq,), lambda b, i: (i,)),
                  _full((lp,)), _per_head(bq, d, True), _per_head(lp, d, False), _per_head(lp, d, False)],
        out_specs=[_per_head(bq, d, True), _row_stats(bq, True)],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bh, lp), jnp.float32)],
        interpret=interpret,
    )(jnp.asarray(kv_lo), jnp.asarray(kv_hi), jnp.asarray(partial), jnp.asarray(q_lvl), jnp.asarray(k_lvl), q, k, v)
    return o, lse


def _flash_fwd(q, k, v, static):
    o, lse = _forward(q, k, v, static)
    return o, (q, k, v, o, lse)


def _flash_bwd(static, res, do):
    q, k, v, o, lse = res
    scale, bq, bk, diagonal, tables, q_lvl, k_lvl, interpret = static.unpack()
    bh, lp, d = q.shape
    kv_lo, kv_hi, q_lo, q_hi, partial = (jnp.asarray(t) for t in tables)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # padded rows: p = exp(-inf) = 0 either way
    qlv, klv = jnp.asarray(q_lvl), jnp.asarray(k_lvl)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bk=bk, diagonal=diagonal),
        grid=(bh, lp // bq),
        in_specs=[_full((len(kv_lo),)), _full((len(kv_hi),)), _full(partial.shape), pl.BlockSpec((bq,), lambda b, i: (i,)),
                  _full((lp,)), _per_head(bq, d, True), _per_head(lp, d, False), _per_head(lp, d, False),
                  _per_head(bq, d, True), _row_stats(bq, True), _row_stats(bq, True)],
        out_specs=_per_head(bq, d, True),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret,
    )(kv_lo, kv_hi, partial, qlv, klv, q, k, v, do, lse, delta)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=bq, diagonal=diagonal),
        grid=(bh, lp // bk),
        in_specs=[_full((len(q_lo),)), _full((len(q_hi),)), _full(partial.shape), _full((lp,)),
                  pl.BlockSpec((bk,), lambda b, i: (i,)),
                  _per_head(lp, d, False), _per_head(bk, d, True), _per_head(bk, d, True),
                  _per_head(lp, d, False), _row_stats(lp, False), _row_stats(lp, False)],
        out_specs=[_per_head(bk, d, True), _per_head(bk, d, True)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret,
    )(q_lo, q_hi, partial, qlv, klv, q, k, v, do, lse, delta)
    return dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)


def _frozen(a):
    """A nested tuple of ints (hashable) from an integer array of any rank."""
    return tuple(_frozen(x) for x in a) if np.ndim(a) > 1 else tuple(int(x) for x in a)


class _Static:
    """Hashable bundle of the non-array arguments (tables as tuples) for custom_vjp's nondiff slot."""

    def __init__(self, scale, bq, bk, diagonal, tables, q_lvl, k_lvl, interpret):
        self._key = (scale, bq, bk, diagonal, tuple(_frozen(t) for t in tables), _frozen(q_lvl), _frozen(k_lvl),
                     interpret)

    def unpack(self):
        scale, bq, bk, diagonal, tables, q_lvl, k_lvl, interpret = self._key
        return (scale, bq, bk, diagonal, tuple(np.asarray(t, np.int32) for t in tables),
                np.asarray(q_lvl, np.int32), np.asarray(k_lvl, np.int32), interpret)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def check_self_attention(kernel: str, q_len: int, k_len: int, mask: str, scale_lens) -> None:
    """What both block-sparse kernels (this one and arjax.ops.splash) need, said in their callers' terms."""
    if k_len != q_len:
        raise ValueError(f"the {kernel} kernel does self-attention (as many keys as queries); got {q_len} "
                         f"queries and {k_len} keys: use impl='xla' for KV-cached steps")
    if mask in ("block_causal", "block_diagonal") and (scale_lens is None or sum(scale_lens) != q_len):
        raise ValueError(f"mask={mask!r} needs scale_lens summing to the sequence length {q_len}; got {scale_lens}")


def check_triton_shapes(head_dim: int, block_q: int, block_k: int) -> None:
    """Pallas's GPU (Triton) lowering loads only power-of-two tiles: say so here, naming the argument, rather
    than as a lowering error from inside Triton. (Head dims 8 to 64 and blocks 16 to 128 ran on an H100.)"""
    for name, n in (("head dim", head_dim), ("block_q", block_q), ("block_k", block_k)):
        if n < 1 or n & (n - 1):
            raise ValueError(f"the block-sparse kernel on GPU needs a power-of-two {name} (Triton tiles); "
                             f"got {n}: use impl='xla' for this model")


def block_sparse_attention(q, k, v, *, scale_lens=None, mask: str = "block_causal", scale: float | None = None,
                           block_q: int = 64, block_k: int = 64, interpret: bool = False):
    """q, k, v: (B, L, H, D) self-attention under a scale-structured mask -> (B, L, H, D)."""
    b, length, h, d = q.shape
    check_self_attention("block-sparse", length, k.shape[1], mask, scale_lens)
    if not interpret and jax.default_backend() == "gpu":
        check_triton_shapes(d, block_q, block_k)
    scale = d ** -0.5 if scale is None else scale
    block = int(np.lcm(block_q, block_k))
    lp = -(-length // block) * block
    lvl = token_levels(mask, scale_lens, length)
    q_lvl = np.concatenate([lvl, np.full(lp - length, PAD_Q, np.int32)])
    k_lvl = np.concatenate([lvl, np.full(lp - length, PAD_K, np.int32)])
    diagonal = mask == "block_diagonal"
    tables = block_tables(q_lvl, k_lvl, block_q, block_k, diagonal)

    def heads_first(x):  # (B, L, H, D) -> (B*H, Lp, D)
        x = jnp.pad(x, ((0, 0), (0, lp - length), (0, 0), (0, 0)))
        return x.transpose(0, 2, 1, 3).reshape(b * h, lp, d)

    static = _Static(float(scale), block_q, block_k, diagonal, tables, q_lvl, k_lvl, bool(interpret))
    o = _flash(heads_first(q), heads_first(k), heads_first(v), static)
    return o.reshape(b, h, lp, d).transpose(0, 2, 1, 3)[:, :length]
