"""VAR: next-scale prediction transformer ("Visual Autoregressive Modeling", Tian et al. 2024).

Token sequence = [class token(s) | word_embed(teacher-forcing input of scales 1..K-1)], plus level and
absolute position embeddings; blocks attend block-causally across scales; an AdaLN head gives logits.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.adaln import AdaLNBeforeHead, AdaLNSelfAttn, linear
from arjax.nn.init import torch_trunc_normal
from arjax.ops import scales
from arjax.parallel import constrain


@dataclasses.dataclass(frozen=True)
class VARConfig:
    depth: int = 16
    embed_dim: int | None = None    # default: 64 * depth (the VAR depth rule)
    num_heads: int | None = None    # default: depth
    mlp_ratio: float = 4.0
    num_classes: int = 1000         # label num_classes is the unconditional class
    vocab_size: int = 4096
    cvae: int = 32
    patch_nums: tuple[int, ...] = scales.VAR_SCHEDULES[256]
    norm_eps: float = 1e-6
    shared_aln: bool = False        # VAR-d36 shares one AdaLN linear across blocks
    attn_l2_norm: bool = True
    # reference init scheme (VAR.init_weights); init_std = sqrt(1 / (3 C))
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    attn_impl: str = "auto"         # arjax.ops.attention impl
    dtype: str = "float32"          # compute dtype of the blocks; params stay float32
    remat: bool = False             # recompute each block in the backward pass (less memory, ~1/3 more compute)
    # teacher forcing runs the blocks as one `lax.scan` over their stacked parameters: XLA compiles one
    # block instead of `depth` (compile time and host memory fall ~depth-fold; same numbers)
    scan_layers: bool = False
    # word embedding of each scale's input: 1 = VAR's per-token linear; k > 1 = a k x k convolution over
    # the scale's grid, so a token's input also shows its neighbouring cells (not in the released models)
    embed_kernel: int = 1

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
        if self.embed_dim is None:
            object.__setattr__(self, "embed_dim", 64 * self.depth)
        if self.num_heads is None:
            object.__setattr__(self, "num_heads", self.depth)
        if self.embed_kernel < 1 or self.embed_kernel % 2 == 0:
            raise ValueError(f"embed_kernel must be an odd size >= 1 (1 = VAR's linear); got {self.embed_kernel}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    @property
    def scale_lens(self) -> tuple[int, ...]:
        return scales.scale_lens(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(self.scale_lens)


def block_stack(cfg: VARConfig, n: int, rngs: nnx.Rngs) -> nnx.List:
    """`n` AdaLN attention blocks of the config's width (every next-scale member builds its own)."""
    c = cfg.embed_dim
    return nnx.List([
        AdaLNSelfAttn(c, c, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps, shared_aln=cfg.shared_aln,
                      attn_l2_norm=cfg.attn_l2_norm, std=math.sqrt(1 / c / 3), dtype=jnp.dtype(cfg.dtype), rngs=rngs)
        for _ in range(n)])


def forward_blocks(blocks, x, bcond, *, remat: bool, scan: bool, **attn_kw):
    """Teacher forcing through a stack of same-shaped blocks -> hidden states (no KV kept).

    With `scan` the blocks' parameters are stacked inside the traced step (the stored layout stays one
    entry per block, as the released checkpoints have it) and one block body is scanned over them."""
    def step(blk, x):
        return blk(constrain(x, "batch", None, None), bcond, **attn_kw)[0]

    if scan and len(blocks) > 1:
        graphdef = nnx.graphdef(blocks[0])
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *(nnx.state(b) for b in blocks))

        def body(x, state):
            return step(nnx.merge(graphdef, state), x), None

        return jax.lax.scan(jax.checkpoint(body) if remat else body, x, stacked)[0]
    step = nnx.remat(step) if remat else step
    for blk in blocks:
        x = step(blk, x)
    return x


def rescale_init(cfg: VARConfig, blocks, head_nm, head) -> None:
    """The scalings VAR.init_weights applies after the truncated-normal draw (residual projections by
    1/sqrt(2 depth), AdaLN gates and the head by their init factors)."""
    c = cfg.embed_dim
    head.kernel[...] = head.kernel[...] * cfg.init_head
    head_nm.ada_lin.kernel[...] = head_nm.ada_lin.kernel[...] * cfg.init_adaln
    gain = jnp.concatenate([jnp.full((2 * c,), cfg.init_adaln_gamma), jnp.full((4 * c,), cfg.init_adaln)])
    for blk in blocks:
        blk.attn.proj.kernel[...] = blk.attn.proj.kernel[...] / math.sqrt(2 * cfg.depth)
        blk.ffn.fc2.kernel[...] = blk.ffn.fc2.kernel[...] / math.sqrt(2 * cfg.depth)
        if cfg.shared_aln:  # (1, 1, 6, C): rows [gamma1, gamma2, scale1, scale2, shift1, shift2]
            blk.ada_gss[...] = blk.ada_gss[...] * gain.reshape(1, 1, 6, c)
        else:               # kernel (C, 6C): same order along the output axis
            blk.ada_lin.kernel[...] = blk.ada_lin.kernel[...] * gain


class VAR(nnx.Module):
    def __init__(self, cfg: VARConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c, l, first_l = cfg.embed_dim, cfg.seq_len, cfg.scale_lens[0]
        std = math.sqrt(1 / c / 3)
        dtype = jnp.dtype(cfg.dtype)
        init = torch_trunc_normal(std)
        k = cfg.embed_kernel
        if k == 1:
            self.word_embed = linear(cfg.cvae, c, std, rngs, dtype=dtype)
        else:  # std / k: the same output scale as the linear with k * k times the inputs
            self.word_embed = nnx.Conv(cfg.cvae, c, (k, k), padding="SAME", kernel_init=torch_trunc_normal(std / k),
                                       bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
        self.class_emb = nnx.Embed(cfg.num_classes + 1, c, embedding_init=init, rngs=rngs)
        self.pos_start = nnx.Param(init(rngs.params(), (1, first_l, c)))
        self.pos_1LC = nnx.Param(init(rngs.params(), (1, l, c)))
        self.lvl_embed = nnx.Embed(len(cfg.patch_nums), c, embedding_init=init, rngs=rngs)
        self.shared_ada_lin = linear(c, 6 * c, std, rngs, dtype=dtype) if cfg.shared_aln else None
        self.blocks = block_stack(cfg, cfg.depth, rngs)
        self.head_nm = AdaLNBeforeHead(c, c, norm_eps=cfg.norm_eps, std=std, rngs=rngs)
        self.head = linear(c, cfg.vocab_size, std, rngs)
        self._rescale_init()

    def _rescale_init(self):
        rescale_init(self.cfg, self.blocks, self.head_nm, self.head)

    # -- pieces shared by teacher forcing and sampling -------------------------------------------
    def class_cond(self, labels):
        """labels (B,) in [0, num_classes]; num_classes is unconditional -> (B, C)."""
        return constrain(self.class_emb(labels), "batch", None)

    def block_cond(self, cond):
        if self.shared_ada_lin is None:
            return cond
        return self.shared_ada_lin(jax.nn.silu(cond)).reshape(-1, 1, 6, self.cfg.embed_dim)

    def lvl_pos(self):
        """(1, L, C) level + absolute position embeddings."""
        lvl = jnp.asarray(scales.level_ids(self.cfg.scale_lens))
        return self.lvl_embed(lvl)[None] + self.pos_1LC[...]

    def sos(self, cond):
        """First-scale tokens from the class embedding: (B, first_l, C), position not yet added."""
        first_l = self.cfg.scale_lens[0]
        return jnp.broadcast_to(cond[:, None], (cond.shape[0], first_l, cond.shape[-1])) + self.pos_start[...]

    def embed_words(self, x, pns):
        """x (B, sum(pn * pn), Cvae): the teacher-forcing inputs of scales of sides `pns`, each flattened
        row-major -> (B, sum(pn * pn), C)."""
        if self.cfg.embed_kernel == 1:
            return self.word_embed(x)
        b = x.shape[0]
        if not pns:  # the first scale alone (progressive training's first stage): no inputs to embed
            return jnp.zeros((b, 0, self.cfg.embed_dim), jnp.dtype(self.cfg.dtype))
        # each scale convolved on its own grid
        return jnp.concatenate([self.word_embed(x[:, s:e].reshape(b, pn, pn, x.shape[-1])).reshape(b, e - s, -1)
                                for pn, (s, e) in zip(pns, scales.begin_ends(pns))], axis=1)

    def logits_from_hidden(self, x, cond):
        return self.readout(self.head_input(x, cond))

    def head_input(self, x, cond):
        """Hidden states -> the head's (affine) input: the class-modulated LayerNorm."""
        return self.head_nm(x.astype(jnp.float32), cond)

    def readout(self, a):
        """The head's input -> float32 logits. Affine, so a guided mix of rows (weights summing to 1) can be
        taken before it: the sampler's CFG then reads out B rows instead of 2B."""
        return constrain(self.head(a).astype(jnp.float32), "batch", None, None)  # FSDP: activations stay split

    def run_blocks(self, x, cond, *, caches=None, **attn_kw):
        """Sampling: the hidden states and every block's (k, v), each block seeing its cache."""
        bcond = self.block_cond(cond)
        x = x.astype(jnp.dtype(self.cfg.dtype))
        kvs = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(constrain(x, "batch", None, None), bcond, cache=None if caches is None else caches[i],
                        **attn_kw)
            kvs.append(kv)
        return x, kvs

    def forward(self, x, cond, **attn_kw):
        """Teacher forcing: the hidden states after every block (remat / layer scan per the config)."""
        return forward_blocks(self.blocks, x.astype(jnp.dtype(self.cfg.dtype)), self.block_cond(cond),
                              remat=self.cfg.remat, scan=self.cfg.scan_layers, **attn_kw)

    # -- teacher forcing ----------------------------------------------------------------------------
    def __call__(self, labels, var_input, num_scales: int | None = None):
        """labels (B,), var_input (B, L - first_l, Cvae) -> logits (B, L, V) float32.

        `num_scales` < K runs only the first scales (progressive training): var_input may then be
        just their prefix, and the logits cover those scales' tokens only."""
        cond = self.class_cond(labels)
        lens = self.cfg.scale_lens[:num_scales]
        words = self.embed_words(var_input[:, :sum(lens) - lens[0]], self.cfg.patch_nums[1:len(lens)])
        x = jnp.concatenate([self.sos(cond), words], axis=1) + self.lvl_pos()[:, :sum(lens)]
        x = self.forward(x, cond, scale_lens=lens, mask="block_causal", impl=self.cfg.attn_impl)
        return self.logits_from_hidden(x, cond)
