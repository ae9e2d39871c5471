"""HMAR sampling: one next-scale draw per scale, then MaskGIT-style masked refinement within the scale.

Scale k is one forward over only its own tokens (Markovian: no KV cache). Step 1 draws every token
from the next-scale head; with steps_k > 1 only the most confident (probability of the drawn token)
are kept, and each further step redraws the still-masked positions with the masked branch and fixes
the most confident of them, following a cosine schedule; the last step fixes the rest. Conditional
and unconditional rows run as one batch of 2B with VAR's guidance ramp t = cfg * k / (K - 1) for
both heads. The schedule is a sampling-time choice: no retraining.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from arjax.nn.models.hmar import HMAR
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE
from arjax.ops import scales
from arjax.sample.filters import top_k_top_p_filter


def fixed_counts(n: int, steps: int) -> tuple[int, ...]:
    """Planned number of tokens fixed after each step: n - floor(n cos(pi/2 j/steps)), at least one
    more than the step before while tokens remain, all n after the last step."""
    out, prev = [], 0
    for j in range(1, steps + 1):
        fixed = n - math.floor(n * math.cos(0.5 * math.pi * j / steps) + 1e-9) if j < steps else n
        prev = min(n, max(fixed, prev + 1))
        out.append(prev)
    return tuple(out)


def _draw(keys, logits, si: int, step: int, top_k: int, top_p: float):
    """One token per position from each sample's own key; returns tokens and their probabilities."""
    logits = top_k_top_p_filter(logits, top_k, top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, si), step))(keys)
    idx = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, axis=-1))(step_keys, logits).astype(jnp.int32)
    prob = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), idx[..., None], axis=-1)[..., 0]
    return idx, prob


def _keep_confident(known, conf, count: int):
    """known | the `count` most confident positions (known ones count as most confident)."""
    conf = jnp.where(known, jnp.inf, conf)
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
    return known | (rank < count)


def sample_hmar(tokenizer: MultiScaleVQVAE, model: HMAR, labels, keys, *, steps=None, cfg: float = 1.5,
                top_k: int = 0, top_p: float = 0.0, forced_tokens=None, forced_mask=None):
    """labels (B,), keys (B,) one PRNG key per sample; steps: masked steps per scale (default 1 each).

    Returns images (B, H, W, 3) in [0, 1], tokens (B, L) int32, the top-2 guided next-scale logits
    (B, L, 2), and per scale an int32 (B, steps_k) array of the tokens newly fixed at each step, counted
    from the masks (forced positions are known before step 1, so they are not counted).

    `forced_tokens` / `forced_mask` (B, L): forced positions hold the forced token from the start and
    are never re-masked (inpainting / editing).
    """
    mcfg = model.cfg
    pns, b, n_scales = mcfg.patch_nums, labels.shape[0], len(mcfg.patch_nums)
    steps = (1,) * n_scales if steps is None else tuple(int(s) for s in steps)
    if len(steps) != n_scales or min(steps) < 1:
        raise ValueError(f"steps needs one int >= 1 per scale ({n_scales}); got {steps}")
    if max(steps) > 1 and not mcfg.mask_blocks:
        raise ValueError("steps > 1 need the masked branch; this HMAR has mask_blocks=0")
    if forced_mask is None:
        forced_mask = jnp.zeros((b, mcfg.seq_len), bool)
        forced_tokens = jnp.zeros((b, mcfg.seq_len), jnp.int32)
    forced_tokens = jnp.asarray(forced_tokens, jnp.int32)

    def twice(a):  # conditional rows first, then unconditional
        return jnp.concatenate([a, a], axis=0)

    def guide(logits, t):
        return (1 + t) * logits[:b] - t * logits[b:]

    cond = model.class_cond(jnp.concatenate([labels, jnp.full_like(labels, mcfg.num_classes)]))
    f_hat = jnp.zeros((b, pns[-1], pns[-1], mcfg.cvae), jnp.float32)
    codebook = tokenizer.quantize.embedding[...]
    nxt, tokens, top2, step_counts = None, [], [], []
    for si, ((s, e), pn) in enumerate(zip(scales.begin_ends(pns), pns)):
        t = cfg * si / max(n_scales - 1, 1)
        x = model.scale_input(cond, si, None if si == 0 else twice(nxt.reshape(b, -1, mcfg.cvae)))
        forced, forced_tok = forced_mask[:, s:e], forced_tokens[:, s:e]
        plan = fixed_counts(e - s, steps[si])

        h = model.scale_trunk(cond, x)  # shared by the next-scale head and every masked step
        logits = guide(model.next_scale_head(h, cond, mask="none", impl=mcfg.attn_impl), t)
        top2.append(jax.lax.top_k(logits, 2)[0])
        idx, prob = _draw(keys, logits, si, 0, top_k, top_p)
        idx = jnp.where(forced, forced_tok, idx)
        known = _keep_confident(forced, prob, plan[0])
        counts = [jnp.sum(known, -1) - jnp.sum(forced, -1)]
        for j in range(1, steps[si]):
            logits = guide(model.scale_masked_logits(cond, x, twice(idx), twice(~known), h=h), t)
            new, prob = _draw(keys, logits, si, j, top_k, top_p)
            idx = jnp.where(known, idx, new)
            now = _keep_confident(known, prob, plan[j])
            counts.append(jnp.sum(now, -1) - jnp.sum(known, -1))
            known = now
        tokens.append(idx)
        step_counts.append(jnp.stack(counts, axis=1).astype(jnp.int32))
        f_hat, nxt = tokenizer.quantize.next_input(si, f_hat, jnp.take(codebook, idx, axis=0).reshape(b, pn, pn, -1))
    images = (tokenizer.fhat_to_img(f_hat) + 1) * 0.5
    return images, jnp.concatenate(tokens, axis=1), jnp.concatenate(top2, axis=1), step_counts
