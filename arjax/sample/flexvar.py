"""FlexVAR's next-scale sampling (`autoregressive_infer_cfg`) with CFG and a KV cache, on the shared loop.

As VAR's (arjax.sample.next_scale), except: the schedule is chosen per call; scale k's input
is scale k-1's codes bicubic-resized to pn_k (no f-hat accumulation); the image is decoded from the
last scale's tokens alone; and the VAR-style CFG ramp is t = cfg * k / min(K - 1, 9) while
pn <= max_pn, and t = cfg above it (so with K > 10 it overshoots cfg before the last scales).
"""
from __future__ import annotations

import jax.numpy as jnp

from arjax.nn.models.flexvar import FlexVAR
from arjax.nn.tokenizers.flexvq import FlexVQVAE
from arjax.sample.next_scale import NextScaleSampler, twice

CFG_STYLES = ("var", "llamagen")
# The reference samples greedily (top_k = 1) at any side above max_pn or outside this set.
REFERENCE_SAMPLED_SIDES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32)


def cfg_scale(cfg: float, si: int, pn: int, num_scales: int, max_pn: int) -> float:
    """VAR-style guidance t of scale si (Python float, as the reference computes it)."""
    if pn > max_pn:
        return cfg
    return cfg * si / max(min(num_scales - 1, 9), 1)


class FlexVARSampler(NextScaleSampler):
    """FlexVAR on the shared loop: KV-cached scales of a schedule chosen per call; the next input is the
    drawn codes resized to the next scale; its own guidance and decoding."""

    def __init__(self, tokenizer, model, labels, keys, *, patch_nums, cfg_style, raw, reference_greedy_sides, **kw):
        if cfg_style not in CFG_STYLES:
            raise ValueError(f"cfg_style must be one of {CFG_STYLES}, got {cfg_style!r}")
        super().__init__(tokenizer, model, labels, keys, model.schedule(patch_nums), **kw)
        self.cfg_style, self.raw, self.reference_greedy_sides = cfg_style, raw, reference_greedy_sides
        self.pos = model.positions(self.pns)
        self.nxt = None  # the next scale's (B, pn, pn, C) input codes

    def scale_logits(self, si):
        s, e = self.bounds[si]
        if si == 0:
            x = self.model.sos(self.cond) + self.pos[:, s:e]
        else:
            x = twice(self.model.word_embed(self.nxt) + self.pos[:, s:e])
        return self.cached_head_input(x)

    def readout(self, guided):  # as VAR's: guidance before the affine head
        return self.model.readout(guided)

    def guide(self, logits, si):
        if self.cfg_style == "llamagen":
            return logits[self.b:] + (logits[:self.b] - logits[self.b:]) * self.guidance
        t = cfg_scale(self.guidance, si, self.pns[si], len(self.pns), self.model.cfg.max_pn)
        return (1 + t) * logits[:self.b] - t * logits[self.b:]

    def top_k_at(self, si):
        pn = self.pns[si]
        if self.reference_greedy_sides and (pn > self.model.cfg.max_pn or pn not in REFERENCE_SAMPLED_SIDES):
            return 1
        return self.top_k

    def feed(self, si, idx, filtered):
        if si + 1 < len(self.pns):
            pn = self.pns[si]
            self.nxt = self.tok.quantize.next_input(idx.reshape(self.b, pn, pn), self.pns[si + 1])

    def images(self, tokens):
        out = self.tok.decode_map(tokens[-1].reshape(self.b, self.pns[-1], self.pns[-1]))
        return out if self.raw else (jnp.clip(out, -1.0, 1.0) + 1) * 0.5


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
    return FlexVARSampler(tokenizer, model, labels, keys, patch_nums=patch_nums, cfg_style=cfg_style, raw=raw,
                          reference_greedy_sides=reference_greedy_sides, cfg=cfg, top_k=top_k, top_p=top_p,
                          forced_tokens=forced_tokens, forced_mask=forced_mask).run()
