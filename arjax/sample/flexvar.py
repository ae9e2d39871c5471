"""FlexVAR's next-scale sampling loop (`autoregressive_infer_cfg`) with CFG and a KV cache.

As VAR's loop (arjax.sample.next_scale), except: the schedule is chosen per call; scale k's input
is scale k-1's codes bicubic-resized to pn_k (no f-hat accumulation); the image is decoded from the
last scale's tokens alone; and the VAR-style CFG ramp is t = cfg * k / min(K - 1, 9) while
pn <= max_pn, and t = cfg above it (so with K > 10 it overshoots cfg before the last scales).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from arjax.nn.models.flexvar import FlexVAR
from arjax.nn.tokenizers.flexvq import FlexVQVAE
from arjax.ops import scales
from arjax.sample.filters import top_k_top_p_filter

CFG_STYLES = ("var", "llamagen")
# The reference samples greedily (top_k = 1) at any side above max_pn or outside this set.
REFERENCE_SAMPLED_SIDES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32)


def cfg_scale(cfg: float, si: int, pn: int, num_scales: int, max_pn: int) -> float:
    """VAR-style guidance t of scale si (Python float, as the reference computes it)."""
    if pn > max_pn:
        return cfg
    return cfg * si / max(min(num_scales - 1, 9), 1)


def sample_flexvar(tokenizer: FlexVQVAE, model: FlexVAR, labels, keys, *, patch_nums=None, cfg: float = 1.5,
                   top_k: int = 0, top_p: float = 0.0, cfg_style: str = "var", forced_tokens=None,
                   forced_mask=None, raw: bool = False, reference_greedy_sides: bool = False):
    """labels (B,), keys (B,) one PRNG key per sample -> images (B, H, W, 3) in [0, 1], tokens (B, L)
    int32, and the top-2 guided logits at every position (B, L, 2).

    cfg_style "var": (1 + t) cond - t uncond with the ramp above; "llamagen": uncond + cfg (cond - uncond).
    forced_tokens / forced_mask (B, L): where the mask is set, the drawn token is replaced by the
    forced one before it feeds the next scale (inpainting / editing). raw=True returns the raw
    decoder output (unclamped: the reference's return value) instead of [0, 1] images.
    reference_greedy_sides=True reproduces the reference's top_k = 1 at sides > max_pn or not in
    REFERENCE_SAMPLED_SIDES (off by default: it is a quirk, and greedy parity runs do not need it).
    top_k = 1 takes the argmax directly (the reference's draw from a one-hot distribution).
    Each sample draws only from its own key, so it does not depend on its batch-mates.
    """
    if cfg_style not in CFG_STYLES:
        raise ValueError(f"cfg_style must be one of {CFG_STYLES}, got {cfg_style!r}")
    mcfg = model.cfg
    pns = model.schedule(patch_nums)
    b, n = labels.shape[0], len(pns)
    bounds = scales.begin_ends(pns)
    if (forced_tokens is None) != (forced_mask is None):
        raise ValueError("forced_tokens and forced_mask must be given together")
    if forced_tokens is not None and forced_tokens.shape != (b, bounds[-1][1]):
        raise ValueError(f"forced_tokens has shape {forced_tokens.shape}; expected {(b, bounds[-1][1])}")
    cond = model.class_cond(jnp.concatenate([labels, jnp.full_like(labels, mcfg.num_classes)]))
    pos = model.positions(pns)
    x = model.sos(cond) + pos[:, : bounds[0][1]]
    caches, tokens, top2 = None, [], []
    for si, pn in enumerate(pns):
        # queries of this scale see every cached key and themselves: no mask needed
        h, caches = model.run_blocks(x, cond, caches=caches, mask="none", impl=mcfg.attn_impl)
        logits = model.logits_from_hidden(h, cond)
        if cfg_style == "var":
            t = cfg_scale(cfg, si, pn, n, mcfg.max_pn)
            logits = (1 + t) * logits[:b] - t * logits[b:]
        else:
            logits = logits[b:] + (logits[:b] - logits[b:]) * cfg
        top2.append(jax.lax.top_k(logits, 2)[0])
        greedy = top_k == 1 or (reference_greedy_sides and (pn > mcfg.max_pn or pn not in REFERENCE_SAMPLED_SIDES))
        if greedy:  # no draw needed (and none compiled); ties go to the first index
            idx = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            logits = top_k_top_p_filter(logits, top_k, top_p)
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, si))(keys)
            idx = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, axis=-1))(step_keys, logits).astype(jnp.int32)
        if forced_tokens is not None:
            s, e = bounds[si]
            idx = jnp.where(forced_mask[:, s:e], forced_tokens[:, s:e].astype(jnp.int32), idx)
        tokens.append(idx)
        if si != n - 1:
            s, e = bounds[si + 1]
            nxt = tokenizer.quantize.next_input(idx.reshape(b, pn, pn), pns[si + 1])
            x = model.word_embed(nxt) + pos[:, s:e]
            x = jnp.concatenate([x, x], axis=0)
    out = tokenizer.decode_map(tokens[-1].reshape(b, pns[-1], pns[-1]))
    images = out if raw else (jnp.clip(out, -1.0, 1.0) + 1) * 0.5
    return images, jnp.concatenate(tokens, axis=1), jnp.concatenate(top2, axis=1)
