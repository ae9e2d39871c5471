"""Logit filters and draws shared by every sampler: top-k / top-p, the per-sample draw and its key
derivation, Gumbel soft draws, and the editing inputs' check.

Top-k and top-p are exact thresholds found by bisection on the logits' bits, not by sorting: a sort of
the whole vocabulary for every token was most of the sampler's time on CPU (XLA:CPU sorts ~10x slower
than it counts). Each threshold takes 32 counting passes over a row, run a block of rows at a time so
that the passes stay in cache. The draw's cumulative mass is two small matmuls (within and across blocks
of the vocabulary), not a scan: XLA:CPU runs a cumsum as reduce-windows, ~10x slower.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# rows of V logits per block of the threshold passes: 64 x 4096 x 4 B = 1 MiB stays in L2 and amortises each
# pass's fixed cost (XLA:CPU loop iteration and thread dispatch); the top-k threshold of VAR-d4's 5440 rows
# took 295 ms with 16 rows a block, 140-160 ms with 64 (2-core AMD EPYC, 2026-12-07)
ROWS_PER_BLOCK = 64
CUMSUM_WIDTH = 64  # columns per block of the matmul cumsum


def _ordered(x):
    """float32 -> uint32 with the same order (negative floats flipped below the positive ones)."""
    b = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(1 << 31))


def _largest(holds, rows: int):
    """Per row, the largest uint32 t (a (rows,) vector) for which `holds(t)` is true, where holds is
    monotone (true for every t below a row's answer, and at 0): 32 bisection steps, one per bit."""
    def bit(i, t):
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(holds(cand), cand, t)
    return lax.fori_loop(0, 32, bit, jnp.zeros((rows,), jnp.uint32))


def _keep(logits, top_k: int, top_p: float):
    """(R, V) logits -> (R, V) bool: the top-k, then of those the smallest top set of mass >= top_p.

    The counting passes run on the block transposed to (V, R): XLA:CPU reduces over the major axis with
    the rows in vector lanes, 1.5-1.8x faster than along them (64 x 4096 blocks, 2026-12-07)."""
    u = _ordered(logits)
    ut, rows = u.T, logits.shape[0]
    keep = jnp.ones(logits.shape, bool)
    if 0 < top_k < logits.shape[-1]:
        # the k-th largest value: the largest t with at least k logits >= t (ties at it are all kept)
        kth = _largest(lambda t: jnp.sum(ut >= t, axis=0, dtype=jnp.int32) >= top_k, rows)
        keep = u >= kth[:, None]
    if top_p > 0:
        # VAR's rule: drop the ascending prefix of cumulative mass <= 1 - top_p. The first logit kept is
        # the largest t with the mass of the logits < t still <= 1 - top_p (never above the maximum)
        pt = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1).T
        cut = _largest(lambda t: jnp.sum(jnp.where(ut < t, pt, 0.0), axis=0) <= 1 - top_p, rows)
        keep &= u >= jnp.minimum(cut, jnp.max(u, axis=-1))[:, None]
    return keep


def _by_blocks(fn, *arrays):
    """fn over (R, ...) row blocks of arrays shaped (..., rows..., X): flattened to rows, padded to whole
    blocks, mapped block by block (lax.map), reshaped back."""
    lead = arrays[0].shape[:-1]
    flat = [a.reshape(-1, *a.shape[len(lead):]) for a in arrays]
    n = flat[0].shape[0]
    pad = (-n) % ROWS_PER_BLOCK
    blocks = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, ROWS_PER_BLOCK, *a.shape[1:])
              for a in flat]
    out = lax.map(lambda xs: fn(*xs), blocks)
    return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:n].reshape(*lead, *o.shape[2:]), out)


def top_k_top_p_filter(logits, top_k: int = 0, top_p: float = 0.0):
    """Set to -inf every logit outside the top-k, then outside the smallest set of mass >= top_p.

    Matches VAR's `sample_with_top_k_top_p_`: a logit survives top-k if it is >= the k-th largest,
    and top-p removes the ascending-sorted prefix whose cumulative probability is <= 1 - top_p,
    always keeping the largest. (Logits tied exactly at the top-p cutoff are all kept, where torch
    drops some of them in sort order.)
    """
    if not (0 < top_k < logits.shape[-1]) and top_p <= 0:
        return logits
    keep = _by_blocks(lambda lg: _keep(lg, top_k, top_p), logits)
    return jnp.where(keep, logits, -jnp.inf)


def gumbel_softmax(key, logits, tau: float):
    """Soft (non-hard) Gumbel-softmax sample over the last axis."""
    g = jax.random.gumbel(key, logits.shape, jnp.float32)
    return jax.nn.softmax((logits + g) / tau, axis=-1)


def sample_key(key, *path: int):
    """The key of one draw: a sample's own key folded with where the draw happens (scale, step / position),
    so a sample never depends on its batch-mates or on how a request is split into batches."""
    for i in path:
        key = jax.random.fold_in(key, i)
    return key


def _cumsum(x):
    """Inclusive cumulative sum over the last axis of (R, V) float32 as two matmuls: within blocks of
    CUMSUM_WIDTH columns by an upper-triangular ones matrix, then each block's offset from the block totals
    by a strictly upper-triangular one (float32-exact products, so on every backend the same sums up to
    the order of the additions)."""
    r, v = x.shape
    w = min(CUMSUM_WIDTH, v)
    pad = (-v) % w
    xb = jnp.pad(x, ((0, 0), (0, pad))).reshape(r, -1, w)
    hi = lax.Precision.HIGHEST
    within = jnp.einsum("rbi,ij->rbj", xb, jnp.triu(jnp.ones((w, w), x.dtype)), precision=hi)
    nb = xb.shape[1]
    offsets = jnp.einsum("rb,bc->rc", within[:, :, -1], jnp.triu(jnp.ones((nb, nb), x.dtype), 1), precision=hi)
    return (within + offsets[..., None]).reshape(r, -1)[:, :v]


def _inverse_cdf(logits, keep, u):
    """One index per row drawn from softmax(logits) restricted to `keep`, by the row's uniform u in
    [0, 1): the first kept index whose cumulative mass reaches u x the kept mass (one random number per
    token instead of V Gumbel draws)."""
    cdf = _cumsum(jnp.where(keep, jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), 0.0))
    x = u * jnp.max(jnp.where(keep, cdf, 0.0), axis=-1)  # the kept mass as summed: some kept cdf reaches x
    # the smallest such index, as a min over indices (one fused pass; XLA:CPU's argmax is a slower one)
    hit = keep & (cdf >= x[..., None])
    return jnp.min(jnp.where(hit, lax.broadcasted_iota(jnp.int32, hit.shape, hit.ndim - 1), hit.shape[-1]), axis=-1)


def draw(keys, logits, top_k: int, top_p: float, *path: int):
    """One token per position: keys (B,), logits (B, ..., V) -> (int32 tokens (B, ...), the filtered logits).

    Each sample draws from `sample_key(keys[i], *path)`: one uniform per position, inverted through the
    filtered distribution's cumulative mass. top_k = 1 takes the argmax (no draw compiled; ties go to the
    first index), which is what a draw from the one surviving logit would give."""
    if top_k == 1:
        return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
                jnp.where(_ordered(logits) >= _ordered(jnp.max(logits, axis=-1, keepdims=True)), logits, -jnp.inf))
    u = jax.vmap(lambda k: jax.random.uniform(sample_key(k, *path), logits.shape[1:-1]))(keys)

    def block(lg, uu):
        keep = _keep(lg, top_k, top_p)
        return keep, _inverse_cdf(lg, keep, uu[:, 0])

    keep, idx = _by_blocks(block, logits, u[..., None])
    return idx, jnp.where(keep, logits, -jnp.inf)


def check_forced(forced_tokens, forced_mask, batch: int, length: int):
    """Editing inputs (B, L) as int32 tokens and a bool mask (all False when none is given)."""
    if (forced_tokens is None) != (forced_mask is None):
        raise ValueError("forced_tokens and forced_mask must be given together")
    if forced_tokens is None:
        return jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch, length), bool)
    if tuple(forced_tokens.shape) != (batch, length) or tuple(forced_mask.shape) != (batch, length):
        raise ValueError(f"forced_tokens / forced_mask have shapes {tuple(forced_tokens.shape)} / "
                         f"{tuple(forced_mask.shape)}; expected {(batch, length)}")
    return jnp.asarray(forced_tokens, jnp.int32), jnp.asarray(forced_mask, bool)
