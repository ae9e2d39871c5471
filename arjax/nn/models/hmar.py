"""HMAR: Markovian next-scale prediction plus masked prediction within a scale ("HMAR: Efficient
Hierarchical Masked Auto-Regressive Image Generation", Kumbong et al., CVPR 2025).

Same inputs as VAR (scale k sees the cumulative f-hat up to scale k-1, resized to pn_k), but every
scale attends only to itself (block-diagonal mask), so the logits of scale k depend on its own input
alone and sampling needs no KV cache. A second, masked branch predicts masked tokens of a scale from
the shared trunk's output plus the embeddings of the scale's known tokens ([MASK] elsewhere). The
trunk (the first depth - mask_blocks blocks) is computed once for both branches: each branch then has
its own last `mask_blocks` blocks and head. Training costs depth + mask_blocks blocks, and a masked
sampling step reruns only the masked branch's blocks on the scale's cached trunk output.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from flax import nnx

from arjax.nn.adaln import AdaLNBeforeHead, linear
from arjax.nn.init import torch_trunc_normal
from arjax.nn.models.var import VAR, VARConfig, block_stack, forward_blocks, rescale_init
from arjax.ops import scales
from arjax.parallel import constrain

SCALE_WEIGHTS = ("uniform", "lognormal")


@dataclasses.dataclass(frozen=True)
class HMARConfig(VARConfig):
    mask_blocks: int = 2            # last blocks (and head) owned by the masked branch; 0 disables it
    scale_weights: str = "uniform"  # per-scale loss weights: arjax.train.hmar_loss.scale_token_weights
    # lognormal scale weights: density of LogNormal(mu, sigma) at scale position (k + 1) / K; see
    # hmar_loss.scale_token_weights (our definition: the paper's exact one was not available to us)
    lognormal_mu: float = -0.5
    lognormal_sigma: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.mask_blocks <= self.depth:
            raise ValueError(f"mask_blocks={self.mask_blocks} must be in [0, depth={self.depth}]")
        if self.scale_weights not in SCALE_WEIGHTS:
            raise ValueError(f"scale_weights must be one of {SCALE_WEIGHTS}; got {self.scale_weights!r}")


class HMAR(VAR):
    def __init__(self, cfg: HMARConfig, *, rngs: nnx.Rngs):
        # VAR's parameters are drawn first, so a VAR and an HMAR of one seed share them
        super().__init__(cfg, rngs=rngs)
        c, std = cfg.embed_dim, math.sqrt(1 / cfg.embed_dim / 3)
        if not cfg.mask_blocks:  # next-scale branch only
            self.mask_branch = self.mask_head_nm = self.mask_head = self.tok_embed = None
            return
        self.mask_branch = block_stack(cfg, cfg.mask_blocks, rngs)
        self.mask_head_nm = AdaLNBeforeHead(c, c, norm_eps=cfg.norm_eps, std=std, rngs=rngs)
        self.mask_head = linear(c, cfg.vocab_size, std, rngs)
        # row vocab_size is the [MASK] embedding
        self.tok_embed = nnx.Embed(cfg.vocab_size + 1, c, embedding_init=torch_trunc_normal(std), rngs=rngs)
        rescale_init(cfg, self.mask_branch, self.mask_head_nm, self.mask_head)  # VAR's scheme for the new weights

    # -- pieces --------------------------------------------------------------------------------------
    @property
    def num_shared(self) -> int:
        return self.cfg.depth - self.cfg.mask_blocks

    def _run(self, blocks, x, cond, **attn_kw):
        return forward_blocks(list(blocks), x.astype(jnp.dtype(self.cfg.dtype)), self.block_cond(cond),
                              remat=self.cfg.remat, scan=self.cfg.scan_layers, **attn_kw)

    def trunk(self, x, cond, **attn_kw):
        """The shared blocks, computed once for both branches."""
        return self._run(list(self.blocks)[:self.num_shared], x, cond, **attn_kw)

    def next_scale_head(self, h, cond, **attn_kw):
        """Trunk output -> the rest of VAR's blocks and VAR's head: next-scale logits."""
        h = self._run(list(self.blocks)[self.num_shared:], h, cond, **attn_kw)
        return self.logits_from_hidden(h, cond)

    def masked_head(self, h, cond, tokens, masked, **attn_kw):
        """Trunk output plus the known-token embeddings ([MASK] where masked) -> the masked branch's
        blocks and head. Attention within the scale lets masked positions read the known tokens."""
        if not self.cfg.mask_blocks:
            raise ValueError("this HMAR has mask_blocks=0: no masked branch")
        ids = jnp.where(masked, self.cfg.vocab_size, tokens)
        h = self._run(self.mask_branch, h + self.tok_embed(ids).astype(h.dtype), cond, **attn_kw)
        logits = self.mask_head(self.mask_head_nm(h.astype(jnp.float32), cond)).astype(jnp.float32)
        return constrain(logits, "batch", None, None)

    def embed_inputs(self, cond, var_input, num_scales: int | None = None):
        """(B, L', C) inputs of the first `num_scales` scales, level and position embeddings added."""
        lens = self.cfg.scale_lens[:num_scales]
        words = self.embed_words(var_input[:, :sum(lens) - lens[0]], self.cfg.patch_nums[1:len(lens)])
        return jnp.concatenate([self.sos(cond), words], axis=1) + self.lvl_pos()[:, :sum(lens)], lens

    def scale_input(self, cond, k: int, x_k=None):
        """Input of scale k alone: the class start tokens (k = 0) or the word embedding (`embed_words`) of
        its (B, n_k, Cvae) teacher-forcing input, with its level and position embeddings."""
        s, e = scales.begin_ends(self.cfg.patch_nums)[k]
        x = self.sos(cond) if k == 0 else self.embed_words(x_k, self.cfg.patch_nums[k:k + 1])
        return x + self.lvl_pos()[:, s:e]

    # -- teacher forcing -----------------------------------------------------------------------------
    def __call__(self, labels, var_input, num_scales: int | None = None):
        """labels (B,), var_input (B, L - first_l, Cvae) -> next-scale logits (B, L, V) float32."""
        cond = self.class_cond(labels)
        x, lens = self.embed_inputs(cond, var_input, num_scales)
        kw = dict(scale_lens=lens, mask="block_diagonal", impl=self.cfg.attn_impl)
        return self.next_scale_head(self.trunk(x, cond, **kw), cond, **kw)

    def masked_logits(self, labels, var_input, tokens, masked, num_scales: int | None = None):
        """tokens (B, L) int, masked (B, L) bool: masked positions see only the [MASK] embedding.
        Returns the masked branch's logits (B, L, V) float32 at every position."""
        return self.both_logits(labels, var_input, tokens, masked, num_scales)[1]

    def both_logits(self, labels, var_input, tokens, masked, num_scales: int | None = None):
        """(next-scale logits, masked-branch logits), the shared trunk computed once (training)."""
        cond = self.class_cond(labels)
        x, lens = self.embed_inputs(cond, var_input, num_scales)
        n = sum(lens)
        kw = dict(scale_lens=lens, mask="block_diagonal", impl=self.cfg.attn_impl)
        h = self.trunk(x, cond, **kw)
        return (self.next_scale_head(h, cond, **kw),
                self.masked_head(h, cond, tokens[:, :n], masked[:, :n], **kw))

    # -- one scale at a time (sampling) --------------------------------------------------------------
    # A scale alone has no mask to apply; the sampler computes the trunk once per scale and reruns
    # only the masked branch at each masked step.
    def scale_trunk(self, cond, x):
        return self.trunk(x, cond, mask="none", impl=self.cfg.attn_impl)

    def scale_logits(self, cond, x):
        """Next-scale logits of one scale from its input x = scale_input(...): (B, n_k, V)."""
        return self.next_scale_head(self.scale_trunk(cond, x), cond, mask="none", impl=self.cfg.attn_impl)

    def scale_masked_logits(self, cond, x, tokens, masked, h=None):
        """Masked-branch logits of one scale: tokens (B, n_k), masked (B, n_k) bool -> (B, n_k, V).
        `h`: the scale's trunk output when already computed."""
        h = self.scale_trunk(cond, x) if h is None else h
        return self.masked_head(h, cond, tokens, masked, mask="none", impl=self.cfg.attn_impl)
