"""FlexVAR: next-scale prediction of ground-truth tokens at any schedule (Jiao et al. 2025).

The blocks and head are VAR's. What differs is the input: each scale's position embedding is a
learnable G x G grid area-resized to pn x pn (no level embedding), and scale k's input is the
previous scale's codes bicubic-resized to pn_k. Nothing depends on a fixed sequence length, so
every method takes the (static) schedule at call time.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.nn.adaln import AdaLNBeforeHead, linear
from arjax.nn.init import torch_trunc_normal
from arjax.nn.models.var import VAR, VARConfig, block_stack
from arjax.nn.tokenizers.flexvq import FLEXVAR_SCHEDULE
from arjax.ops import scales
from arjax.ops.resample import resize_area


@dataclasses.dataclass(frozen=True)
class FlexVARConfig(VARConfig):
    patch_nums: tuple[int, ...] = FLEXVAR_SCHEDULE   # default (training) schedule
    pos_grid: int = 32      # side G of the learnable position grid
    max_pn: int = 16        # largest side trained on: the CFG ramp stops above it

    def __post_init__(self):
        super().__post_init__()
        if self.embed_kernel != 1:
            raise ValueError("embed_kernel: FlexVAR embeds each token on its own (1); the convolutional word "
                             "embedding is implemented for VAR and HMAR")


def sincos_grid(g: int, c: int) -> np.ndarray:
    """The reference's initial grid, (1, C, G, G): even channels sin(y w_i), odd channels cos(x w_i)."""
    w = np.exp(np.arange(0, c, 2, dtype=np.float32) * -(math.log(10000.0) / c))
    y = np.arange(g, dtype=np.float32)
    grid = np.zeros((g, g, c), np.float32)
    grid[:, :, 0::2] = np.sin(y[:, None, None] * w)
    grid[:, :, 1::2] = np.cos(y[None, :, None] * w)
    return grid.transpose(2, 0, 1)[None]


class FlexVAR(nnx.Module):
    def __init__(self, cfg: FlexVARConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.embed_dim
        std = math.sqrt(1 / c / 3)
        dtype = jnp.dtype(cfg.dtype)
        init = torch_trunc_normal(std)
        self.word_embed = linear(cfg.cvae, c, std, rngs, dtype=dtype)
        self.class_emb = nnx.Embed(cfg.num_classes + 1, c, embedding_init=init, rngs=rngs)
        self.pos_start = nnx.Param(init(rngs.params(), (1, cfg.patch_nums[0] ** 2, c)))
        # Stored channel-first (1, C, G, G) exactly as the PyTorch parameter, so conversion is a copy.
        self.pos_1LC = nnx.Param(jnp.asarray(sincos_grid(cfg.pos_grid, c)))
        self.shared_ada_lin = linear(c, 6 * c, std, rngs, dtype=dtype) if cfg.shared_aln else None
        self.blocks = block_stack(cfg, cfg.depth, rngs)
        self.head_nm = AdaLNBeforeHead(c, c, norm_eps=cfg.norm_eps, std=std, rngs=rngs)
        self.head = linear(c, cfg.vocab_size, std, rngs)
        self._rescale_init()

    # Identical to VAR's: borrowed rather than inherited, so a FlexVAR is never mistaken for a VAR.
    _rescale_init = VAR._rescale_init
    class_cond = VAR.class_cond
    block_cond = VAR.block_cond
    logits_from_hidden = VAR.logits_from_hidden
    head_input = VAR.head_input
    readout = VAR.readout
    run_blocks = VAR.run_blocks
    forward = VAR.forward

    def schedule(self, patch_nums=None) -> tuple[int, ...]:
        pns = self.cfg.patch_nums if patch_nums is None else tuple(int(p) for p in patch_nums)
        if pns[0] ** 2 != self.pos_start.shape[1]:
            raise ValueError(f"schedule {pns} starts with {pns[0] ** 2} tokens but pos_start holds "
                             f"{self.pos_start.shape[1]}")
        return pns

    def positions(self, patch_nums=None):
        """(1, L, C): the grid area-resized to every scale, flattened row-major (token 0 of a 1x1
        first scale gets the grid mean)."""
        grid = jnp.transpose(self.pos_1LC[...], (0, 2, 3, 1))
        return jnp.concatenate([resize_area(grid, pn).reshape(1, pn * pn, -1)
                                for pn in self.schedule(patch_nums)], axis=1)

    def sos(self, cond):
        """First-scale tokens from the class embedding: (B, first_l, C), position not yet added."""
        first_l = self.pos_start.shape[1]
        return jnp.broadcast_to(cond[:, None], (cond.shape[0], first_l, cond.shape[-1])) + self.pos_start[...]

    def __call__(self, labels, var_input, patch_nums=None):
        """labels (B,), var_input (B, L - first_l, Cvae) -> logits (B, L, V) float32, with the
        block-causal mask of `patch_nums` (default cfg.patch_nums)."""
        pns = self.schedule(patch_nums)
        lens = scales.scale_lens(pns)
        if var_input.shape[1] != sum(lens) - lens[0]:
            raise ValueError(f"var_input has {var_input.shape[1]} tokens; schedule {pns} needs {sum(lens) - lens[0]}")
        cond = self.class_cond(labels)
        x = jnp.concatenate([self.sos(cond), self.word_embed(var_input)], axis=1) + self.positions(pns)
        x = self.forward(x, cond, scale_lens=lens, mask="block_causal", impl=self.cfg.attn_impl)
        return self.logits_from_hidden(x, cond)
