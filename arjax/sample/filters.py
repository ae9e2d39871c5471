"""Logit filters and draws shared by every sampler: top-k / top-p, the per-sample draw and its key
derivation, Gumbel soft draws, and the editing inputs' check."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def top_k_top_p_filter(logits, top_k: int = 0, top_p: float = 0.0):
    """Set to -inf every logit outside the top-k, then outside the smallest set of mass >= top_p.

    Matches VAR's `sample_with_top_k_top_p_`: a logit survives top-k if it is >= the k-th largest,
    and top-p removes the ascending-sorted prefix whose cumulative probability is <= 1 - top_p,
    always keeping the largest. (Logits tied exactly at the top-p cutoff are all kept, where torch
    drops some of them in sort order.)
    """
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0:
        srt = jnp.sort(logits, axis=-1)
        remove = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1) <= (1 - top_p)
        remove = remove.at[..., -1].set(False)
        cutoff = jnp.min(jnp.where(remove, jnp.inf, srt), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


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


def draw(keys, logits, top_k: int, top_p: float, *path: int):
    """One token per position: keys (B,), logits (B, ..., V) -> (int32 tokens (B, ...), the filtered logits).

    Each sample draws from `sample_key(keys[i], *path)`. top_k = 1 takes the argmax (no draw compiled; ties
    go to the first index), which is what a categorical over the one surviving logit would give."""
    filtered = top_k_top_p_filter(logits, top_k, top_p)
    if top_k == 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), filtered
    idx = jax.vmap(lambda k, lg: jax.random.categorical(sample_key(k, *path), lg, axis=-1))(keys, filtered)
    return idx.astype(jnp.int32), filtered


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
