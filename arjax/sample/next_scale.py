"""The sampling loop every next-scale member shares (`NextScaleSampler`), and VAR's sampler on it.

`run` walks the scales coarse to fine. At each scale: the logits of conditional and unconditional rows
(one batch of 2B), classifier-free guidance, one draw per token from each sample's own key
(`arjax.sample.filters.draw`: key = fold_in(fold_in(key, scale), step)), forced tokens (editing), the
member's within-scale steps, and the next scale's input. A member overrides the hooks:

    scale_logits(si)                   (2B, n_k, D) of scale si from the input prepared so far: the logits,
                                       or the input of an affine head that `readout` applies after guidance
    guide(logits, si)                  guided (B, n_k, D); default VAR's ramp (1 + t) cond - t uncond,
                                       t = cfg * k / (K - 1); its row weights sum to 1, so it commutes
                                       with an affine head
    readout(guided)                    (B, n_k, V) logits from the guided rows (default: they are logits)
    top_k_at(si)                       the top-k of scale si's draw (default: the caller's)
    within_scale(si, idx, filtered, forced)  refine scale si's tokens (HMAR's masked steps; default none)
    feed(si, idx, filtered)            prepare the next scale's input from scale si's tokens
    images(tokens)                     decode at the end

The loop is unrolled over the (static) scales, so one `jax.jit` compiles the whole sampler.
"""
from __future__ import annotations

import abc

import jax
import jax.numpy as jnp

from arjax.nn.models.var import VAR
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE
from arjax.ops import scales
from arjax.sample.filters import check_forced, draw, gumbel_softmax, sample_key


def twice(x):
    """The same input for the conditional rows (first B) and the unconditional ones."""
    return jnp.concatenate([x, x], axis=0)


class NextScaleSampler(abc.ABC):
    """One call's state: the model, the scale schedule, the class conditioning of the 2B rows."""

    def __init__(self, tokenizer, model, labels, keys, patch_nums, *, cfg: float, top_k: int, top_p: float,
                 forced_tokens=None, forced_mask=None):
        self.tok, self.model, self.keys = tokenizer, model, keys
        self.pns, self.b = tuple(patch_nums), labels.shape[0]
        self.guidance, self.top_k, self.top_p = cfg, top_k, top_p  # cfg: the guidance scale
        self.bounds = scales.begin_ends(self.pns)
        self.forced_tokens, self.forced_mask = check_forced(forced_tokens, forced_mask, self.b, self.bounds[-1][1])
        self.cond = model.class_cond(jnp.concatenate([labels, jnp.full_like(labels, model.cfg.num_classes)]))
        self.caches = None

    def run(self):
        """-> images (B, H, W, 3) in [0, 1], tokens (B, L) int32, the top-2 guided logits (B, L, 2)."""
        tokens, top2 = [], []
        for si in range(len(self.pns)):
            logits = self.readout(self.guide(self.scale_logits(si), si))
            top2.append(jax.lax.top_k(logits, 2)[0])
            idx, filtered = draw(self.keys, logits, self.top_k_at(si), self.top_p, si, 0)
            s, e = self.bounds[si]
            forced = self.forced_mask[:, s:e]
            idx = jnp.where(forced, self.forced_tokens[:, s:e], idx)
            idx = self.within_scale(si, idx, filtered, forced)
            tokens.append(idx)
            self.feed(si, idx, filtered)
        return self.images(tokens), jnp.concatenate(tokens, axis=1), jnp.concatenate(top2, axis=1)

    # ---- hooks -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def scale_logits(self, si: int):
        """See the module docstring."""

    def guide(self, logits, si: int):
        t = self.guidance * si / max(len(self.pns) - 1, 1)
        return (1 + t) * logits[:self.b] - t * logits[self.b:]

    def readout(self, guided):
        return guided

    def top_k_at(self, si: int) -> int:
        return self.top_k

    def within_scale(self, si: int, idx, filtered, forced):
        return idx

    @abc.abstractmethod
    def feed(self, si: int, idx, filtered) -> None:
        """See the module docstring."""

    @abc.abstractmethod
    def images(self, tokens):
        """See the module docstring."""

    # ---- shared by the KV-cached members -----------------------------------------------------------------
    def cached_head_input(self, x):
        """Scale input x (2B, n_k, C) -> the head's input (see `readout`); its queries see every cached key
        and themselves, so no mask is needed."""
        h, self.caches = self.model.run_blocks(x, self.cond, caches=self.caches, mask="none",
                                               impl=self.model.cfg.attn_impl)
        return self.model.head_input(h, self.cond)


class VARSampler(NextScaleSampler):
    """VAR: KV-cached scales; the next input is the residual f-hat downsampled to the next scale."""

    def __init__(self, tokenizer: MultiScaleVQVAE, model: VAR, labels, keys, *, more_smooth: bool = False, **kw):
        super().__init__(tokenizer, model, labels, keys, model.cfg.patch_nums, **kw)
        self.more_smooth = more_smooth
        self.pos = model.lvl_pos()
        self.f_hat = jnp.zeros((self.b, self.pns[-1], self.pns[-1], model.cfg.cvae), jnp.float32)
        self.codebook = tokenizer.quantize.embedding[...]
        self.nxt = None  # the next scale's (B, pn, pn, Cvae) input

    def readout(self, guided):
        """The model's affine head on the guided rows (scale_logits gives its input): B rows through the
        vocabulary-wide matmul instead of 2B (VAR-d4 at 256 px: a quarter of the sampler's transformer FLOPs)."""
        return self.model.readout(guided)

    def scale_logits(self, si):
        s, e = self.bounds[si]
        if si == 0:
            x = self.model.sos(self.cond) + self.pos[:, s:e]
        else:
            x = twice(self.model.embed_words(self.nxt.reshape(self.b, -1, self.model.cfg.cvae),
                                             self.pns[si:si + 1]) + self.pos[:, s:e])
        return self.cached_head_input(x)

    def embeddings(self, si, idx, filtered):
        """Codes of scale si's tokens; with more_smooth, a Gumbel-softmax mixture of codes (VAR's visual
        option, not used for FID) except where a token is forced."""
        emb = jnp.take(self.codebook, idx, axis=0)
        if not self.more_smooth:
            return emb
        ratio = si / (len(self.pns) - 1)
        tau = max(0.27 * (1 - ratio * 0.95), 0.005)
        soft = jax.vmap(lambda k, lg: gumbel_softmax(sample_key(k, si, 1), lg, tau))(self.keys, filtered * (1 + ratio))
        s, e = self.bounds[si]
        return jnp.where(self.forced_mask[:, s:e, None], emb, soft @ self.codebook)

    def feed(self, si, idx, filtered):
        pn = self.pns[si]
        emb = self.embeddings(si, idx, filtered).reshape(self.b, pn, pn, -1)
        self.f_hat, self.nxt = self.tok.quantize.next_input(si, self.f_hat, emb)

    def images(self, tokens):
        return (self.tok.fhat_to_img(self.f_hat) + 1) * 0.5


def sample_next_scale(tokenizer: MultiScaleVQVAE, model: VAR, labels, keys, *, cfg: float = 1.5,
                      top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                      forced_tokens=None, forced_mask=None):
    """labels (B,), keys (B,) one PRNG key per sample -> images (B, H, W, 3) in [0, 1], tokens (B, L)
    int32, and the top-2 guided logits at every position (B, L, 2).

    Each sample draws only from its own key, so a sample does not depend on its batch-mates or on
    how a large request is split into batches.

    `more_smooth` replaces the hard token by a Gumbel-softmax mixture of codes (VAR's visual option,
    not used for FID).

    `forced_tokens` / `forced_mask` (B, L): zero-shot editing. Where the mask is set, the drawn token is
    replaced by the forced one before it feeds the next scale (teacher forcing of the known region).
    """
    return VARSampler(tokenizer, model, labels, keys, more_smooth=more_smooth, cfg=cfg, top_k=top_k, top_p=top_p,
                      forced_tokens=forced_tokens, forced_mask=forced_mask).run()
