"""HMAR sampling: one next-scale draw per scale, then MaskGIT-style masked refinement within the scale.

Scale k is one forward over only its own tokens (Markovian: no KV cache). Step 1 draws every token
from the next-scale head; with steps_k > 1 only the most confident (probability of the drawn token)
are kept, and each further step redraws the still-masked positions with the masked branch and fixes
the most confident of them, following a cosine schedule; the last step fixes the rest. Conditional
and unconditional rows run as one batch of 2B with VAR's guidance ramp t = cfg * k / (K - 1) for
both heads. The schedule is a sampling-time choice: no retraining. The loop over scales is the shared
one (`arjax.sample.next_scale.NextScaleSampler`); HMAR's hooks are its Markovian scale input and the
masked steps; step j of scale k draws from fold_in(fold_in(key, k), j).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from arjax.nn.models.hmar import HMAR
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE
from arjax.sample.filters import draw
from arjax.sample.next_scale import VARSampler, twice


def fixed_counts(n: int, steps: int) -> tuple[int, ...]:
    """Planned number of tokens fixed after each step: n - floor(n cos(pi/2 j/steps)), at least one
    more than the step before while tokens remain, all n after the last step."""
    out, prev = [], 0
    for j in range(1, steps + 1):
        fixed = n - math.floor(n * math.cos(0.5 * math.pi * j / steps) + 1e-9) if j < steps else n
        prev = min(n, max(fixed, prev + 1))
        out.append(prev)
    return tuple(out)


def _keep_confident(known, conf, count: int):
    """known | the `count` most confident positions (known ones count as most confident)."""
    conf = jnp.where(known, jnp.inf, conf)
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
    return known | (rank < count)


def _prob(filtered, idx):
    """Probability of each drawn token under the (filtered) distribution it was drawn from."""
    return jnp.take_along_axis(jax.nn.softmax(filtered, axis=-1), idx[..., None], axis=-1)[..., 0]


class HMARSampler(VARSampler):
    """HMAR on the shared loop: no KV cache (each scale sees only its own input), and the masked steps
    within a scale. The trunk output of a scale is computed once and shared by every step."""

    def __init__(self, tokenizer, model, labels, keys, *, steps, **kw):
        super().__init__(tokenizer, model, labels, keys, **kw)
        self.steps, self.step_counts = steps, []

    def readout(self, guided):  # scale_logits and the masked steps give logits, the head already applied
        return guided

    def scale_logits(self, si):
        nxt = None if si == 0 else twice(self.nxt.reshape(self.b, -1, self.model.cfg.cvae))
        self.x = self.model.scale_input(self.cond, si, nxt)
        self.h = self.model.scale_trunk(self.cond, self.x)
        return self.model.next_scale_head(self.h, self.cond, mask="none", impl=self.model.cfg.attn_impl)

    def within_scale(self, si, idx, filtered, forced):
        s, e = self.bounds[si]
        plan = fixed_counts(e - s, self.steps[si])
        known = _keep_confident(forced, _prob(filtered, idx), plan[0])
        counts = [jnp.sum(known, -1) - jnp.sum(forced, -1)]
        for j in range(1, self.steps[si]):
            logits = self.guide(self.model.scale_masked_logits(self.cond, self.x, twice(idx), twice(~known), h=self.h),
                                si)
            new, filtered = draw(self.keys, logits, self.top_k, self.top_p, si, j)
            idx = jnp.where(known, idx, new)
            now = _keep_confident(known, _prob(filtered, new), plan[j])
            counts.append(jnp.sum(now, -1) - jnp.sum(known, -1))
            known = now
        self.step_counts.append(jnp.stack(counts, axis=1).astype(jnp.int32))
        return idx


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
    n_scales = len(mcfg.patch_nums)
    steps = (1,) * n_scales if steps is None else tuple(int(s) for s in steps)
    if len(steps) != n_scales or min(steps) < 1:
        raise ValueError(f"steps needs one int >= 1 per scale ({n_scales}); got {steps}")
    if max(steps) > 1 and not mcfg.mask_blocks:
        raise ValueError("steps > 1 need the masked branch; this HMAR has mask_blocks=0")
    sampler = HMARSampler(tokenizer, model, labels, keys, steps=steps, cfg=cfg, top_k=top_k, top_p=top_p,
                          forced_tokens=forced_tokens, forced_mask=forced_mask)
    return (*sampler.run(), sampler.step_counts)
