"""Logit filters and draws shared by the samplers (top-k, top-p, Gumbel soft draws)."""
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
