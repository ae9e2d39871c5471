"""Collaborative decoding (CoDe, "Collaborative Decoding Makes Visual Auto-Regressive Modeling Efficient",
Chen et al. 2024): a large drafter samples the first, small scales, where the image's content is decided
and tokens are few; a small refiner samples the remaining large scales, where most of the tokens (and of
the compute) are. Training-free on two VAR models that share a tokenizer.

At the hand-over the refiner's KV cache is filled by one block-causal pass over the inputs of the
drafter's scales (class token + the residual inputs the drafter's tokens made), then sampling goes on
scale by scale with the refiner's cache, its class embedding, positions and head. Everything else (keys,
guidance ramp, filters, forced tokens for editing) is the single-model sampler's, so with draft_scales =
K (or drafter = refiner) the result is that of `sample_next_scale`.
"""
from __future__ import annotations

import jax.numpy as jnp

from arjax.nn.models.var import VAR
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE
from arjax.ops import scales
from arjax.sample.next_scale import VARSampler, twice


class CollaborativeSampler(VARSampler):
    def __init__(self, tokenizer, drafter: VAR, refiner: VAR, labels, keys, *, draft_scales: int, **kw):
        super().__init__(tokenizer, drafter, labels, keys, **kw)
        self.refiner, self.draft_scales = refiner, draft_scales
        self.rows = jnp.concatenate([labels, jnp.full_like(labels, refiner.cfg.num_classes)])
        self.inputs = []  # the next-scale inputs (B, pn, pn, Cvae) made so far: scale si + 1's at index si

    def feed(self, si, idx, filtered):
        super().feed(si, idx, filtered)
        self.inputs.append(self.nxt)

    def scale_logits(self, si):
        if si == self.draft_scales:
            self.hand_over()
        return super().scale_logits(si)

    def hand_over(self):
        """The refiner takes over: its conditioning and positions, and its cache of the drafted scales."""
        n, r = self.draft_scales, self.refiner
        self.model, self.cond, self.pos = r, r.class_cond(self.rows), r.lvl_pos()
        if n == 0:
            return
        lens = scales.scale_lens(self.pns[:n])
        x = r.sos(self.cond)
        if n > 1:
            flat = jnp.concatenate([inp.reshape(self.b, -1, r.cfg.cvae) for inp in self.inputs[:n - 1]], axis=1)
            x = jnp.concatenate([x, twice(r.embed_words(flat, self.pns[1:n]))], axis=1)
        _, self.caches = r.run_blocks(x + self.pos[:, :sum(lens)], self.cond, scale_lens=lens, mask="block_causal",
                                      impl=r.cfg.attn_impl)


def sample_collaborative(tokenizer: MultiScaleVQVAE, drafter: VAR, refiner: VAR, labels, keys, *, draft_scales: int,
                         cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                         forced_tokens=None, forced_mask=None):
    """`sample_next_scale` with scales [0, draft_scales) from `drafter` and the rest from `refiner`."""
    if not 0 <= draft_scales <= len(drafter.cfg.patch_nums):
        raise ValueError(f"draft_scales must lie in [0, {len(drafter.cfg.patch_nums)}] (the number of scales); "
                         f"got {draft_scales}")
    return CollaborativeSampler(tokenizer, drafter, refiner, labels, keys, draft_scales=draft_scales,
                                more_smooth=more_smooth, cfg=cfg, top_k=top_k, top_p=top_p,
                                forced_tokens=forced_tokens, forced_mask=forced_mask).run()
