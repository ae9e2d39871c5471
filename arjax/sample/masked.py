"""MaskGIT's iterative parallel decoding with classifier-free guidance.

Every image token starts unknown ([MASK]) except the forced ones (editing). Each of the `iterations` steps
runs the bidirectional model once on the current tokens, draws a token at every unknown position, keeps
the most confident draws and re-masks the rest; after the last step every token is known. Known tokens
(forced, or fixed at an earlier step) are never re-masked and never redrawn.

The steps are one `jax.lax.scan` over a static count: the body (one model call on 2B sequences) compiles
once, where a Python loop would inline `iterations` copies of the model.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax.nn.models.maskgit import MaskGIT
from arjax.nn.tokenizers.flexvq import FlexVQVAE
from arjax.sample.filters import check_forced, sample_key, top_k_top_p_filter


def masked_after(unknown: int, iterations: int) -> list[int]:
    """Tokens still masked after each step t = 0..T-1 when `unknown` are masked at the start:

        m_t = max(0, min(floor(unknown * cos(pi/2 * (t + 1) / T)), m_{t-1} - 1)),  m_{-1} = unknown,

    and m_{T-1} = 0. Without forced tokens unknown = L (MaskGIT's cosine schedule); with forced ones the
    same curve runs over the unknown tokens only. Each step fixes at least one new token while any is left
    (with fewer unknown tokens than steps the last steps fix nothing). Float64 on the host: no float32
    rounding flips a floor at an exact integer (e.g. 16 * cos(pi/3) = 8)."""
    out, prev = [], unknown
    for t in range(iterations):
        m = 0 if t == iterations - 1 else max(0, min(math.floor(unknown * math.cos(math.pi / 2 * (t + 1) / iterations)),
                                                     prev - 1))
        out.append(m)
        prev = m
    return out


@functools.lru_cache(maxsize=16)
def schedule_table(length: int, iterations: int) -> np.ndarray:
    """(length + 1, iterations) int32: row u is `masked_after(u, iterations)`; a sample looks up its row by
    its number of unforced tokens."""
    table = np.asarray([masked_after(u, iterations) for u in range(length + 1)], np.int32)
    table.flags.writeable = False
    return table


def sample_maskgit(tokenizer: FlexVQVAE, model: MaskGIT, labels, keys, *, iterations: int = 8, cfg: float = 4.0,
                   top_k: int = 0, top_p: float = 0.0, choice_temperature: float = 4.5, temperature: float = 1.0,
                   forced_tokens=None, forced_mask=None):
    """labels (B,), keys (B,) one PRNG key per sample -> images (B, H, W, 3) in [0, 1], tokens (B, L) int32,
    top2 (B, L, 2) and known (B, T, L) bool: which tokens are known after each step.

    top2: the two largest guided logits (before temperature and filtering) at the position, taken at the
    step the token was fixed; for a forced token, at the first step.

    Step t (0-based, T = iterations):
    1. The model runs on [cond; uncond] (2B sequences; uncond = the null class `num_classes`) with the
       unknown tokens as [MASK]. Guidance as LlamaGen's: with cfg > 1 the logits are
       uncond + cfg * (cond - uncond), else cond alone (cfg = 1 is exactly the conditional model). `cfg`
       may be traced, so the unconditional half always runs.
    2. Logits / max(temperature, 1e-5), then top-k / top-p (0 = off; top_p >= 1 is off too). Sample i
       draws one token at every position from fold_in(fold_in(keys[i], t), 0); known positions keep
       their token.
    3. Confidence = log p(drawn) under that tempered, filtered distribution + choice_temperature *
       (1 - (t + 1) / T) * Gumbel noise from fold_in(fold_in(keys[i], t), 1); known positions get +inf.
    4. The m_t least confident positions (`masked_after`; of equal confidences the lower position first) stay
       masked, the rest are known from now on.
    Each sample uses only its own key and row, so it does not depend on its batch-mates.

    forced_tokens / forced_mask (B, L): editing. Forced tokens are known from the start with the given
    value, never redrawn or re-masked; the schedule runs over each sample's unforced tokens.
    """
    mcfg = model.cfg
    b, n, steps = labels.shape[0], mcfg.block_size, int(iterations)
    if not 1 <= steps <= n:
        raise ValueError(f"iterations must lie in [1, {n}] (the image tokens); got {iterations}")
    forced_tokens, forced_mask = check_forced(forced_tokens, forced_mask, b, n)
    # (B, T): tokens left masked after each step, by each sample's count of unforced tokens
    remaining = jnp.asarray(schedule_table(n, steps))[n - jnp.sum(forced_mask, axis=1)]
    both = jnp.concatenate([labels, jnp.full_like(labels, mcfg.num_classes)])
    top_p = top_p if top_p < 1.0 else 0.0

    def body(carry, t):
        tokens, known, top2 = carry
        logits = model(both, jnp.concatenate([tokens, tokens]))
        cond, uncond = logits[:b], logits[b:]
        logits = jnp.where(cfg > 1.0, uncond + (cond - uncond) * cfg, cond)
        logp = jax.nn.log_softmax(top_k_top_p_filter(logits / max(temperature, 1e-5), top_k, top_p), axis=-1)
        drawn = jax.vmap(lambda k, lp: jax.random.categorical(sample_key(k, t, 0), lp))(keys, logp)
        drawn = jnp.where(known, tokens, drawn.astype(jnp.int32))
        noise = jax.vmap(lambda k: jax.random.gumbel(sample_key(k, t, 1), (n,)))(keys)
        conf = jnp.take_along_axis(logp, drawn[..., None], axis=-1)[..., 0]
        conf = jnp.where(known, jnp.inf, conf + choice_temperature * (1.0 - (t + 1) / steps) * noise)
        rank = jnp.argsort(jnp.argsort(conf, axis=1, stable=True), axis=1)  # 0 = least confident
        now = rank >= jax.lax.dynamic_index_in_dim(remaining, t, axis=1)    # (B, 1) broadcast over L
        fixed_here = now & (~known | (t == 0))  # forced tokens count as fixed at the first step
        top2 = jnp.where(fixed_here[..., None], jax.lax.top_k(logits, 2)[0], top2)
        return (jnp.where(now, drawn, mcfg.mask_id), now, top2), now

    init = (jnp.where(forced_mask, forced_tokens, mcfg.mask_id), forced_mask, jnp.zeros((b, n, 2), jnp.float32))
    (tokens, _, top2), known = jax.lax.scan(body, init, jnp.arange(steps))
    images = (tokenizer.decode(tokens, (mcfg.grid,)) + 1) * 0.5   # decode clips to [-1, 1]
    return images, tokens, top2, jnp.swapaxes(known, 0, 1)
