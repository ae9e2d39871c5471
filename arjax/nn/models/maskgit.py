"""MaskGIT: class-conditional masked token modelling with iterative parallel decoding ("MaskGIT: Masked
Generative Image Transformer", Chang et al. 2022).

The transformer is *bidirectional* over [class token | image tokens]: every image position sees every
other one, and an input token id equal to `vocab_size` is [MASK] (the token embedding has vocab_size + 1
rows). The class embedding has num_classes + 1 rows, the last the null class of classifier-free guidance.
The output is logits over the vocab_size codes (never [MASK]) at the image positions.

Architecture choice: the paper's transformer is BERT-style (post-LN, learned absolute positions, GELU).
Here it is LlamaGen's pre-norm stack instead (RMSNorm, SwiGLU, no biases, 2D RoPE as the only position
signal), reused block for block from `arjax.nn.models.llamagen` with the attention mask "none": LlamaGen
and MaskGIT then differ only in what they predict and how they decode (raster vs masked), not in layer
details, which is the comparison the family configs are for. One deviation from LlamaGen's RoPE table: the class
token's row is the identity rotation (cos 1, sin 0), not zero, so the class token's query and key stay
learnable; with LlamaGen's zero row every image token would give the class token a fixed score of 0.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.nn.models.llamagen import LlamaDims, RMSNorm, TransformerBlock, _linear, rope_table
from arjax.parallel import constrain


@dataclasses.dataclass(frozen=True)
class MaskGITConfig(LlamaDims):
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None        # None = n_head; fewer = grouped-query attention
    multiple_of: int = 256              # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = 1024              # codes; id vocab_size is [MASK]
    num_classes: int = 1000             # label num_classes is the null (unconditional) class
    block_size: int = 256               # image tokens: a grid x grid raster
    attn_impl: str = "auto"             # arjax.ops.attention impl
    dtype: str = "float32"              # compute dtype of the layers; params, RMSNorm and RoPE stay float32
    remat: bool = False                 # recompute each layer in the backward pass

    def __post_init__(self):
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.dim % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"model.dim={self.dim} must divide into model.n_head={self.n_head} heads, and n_head "
                             f"into model.n_kv_head={self.n_kv_head} groups")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim (model.dim / model.n_head) divisible by 4; got {self.head_dim}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"model.block_size={self.block_size} image tokens is not a square grid")

    # the fields LlamaGen's blocks and RoPE table read
    cls_token_num = 1

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def seq_len(self) -> int:
        return 1 + self.block_size


@functools.lru_cache(maxsize=8)
def maskgit_rope(cfg: MaskGITConfig) -> np.ndarray:
    """LlamaGen's 2D RoPE table with the class row set to the identity rotation (see the module docstring)."""
    table = rope_table(cfg).copy()
    table[0, :, 0], table[0, :, 1] = 1.0, 0.0
    table.flags.writeable = False
    return table


class MaskGIT(nnx.Module):
    def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        self.cls_embedding = nnx.Embed(cfg.num_classes + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.tok_embeddings = nnx.Embed(cfg.vocab_size + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs, mask="none") for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = _linear(cfg.dim, cfg.vocab_size, rngs, None, init=nnx.initializers.zeros)

    def __call__(self, labels, tokens):
        """labels (B,) in [0, num_classes], tokens (B, block_size) in [0, vocab_size] (vocab_size = [MASK])
        -> logits (B, block_size, vocab_size) float32 at every image position."""
        c = self.cfg
        if tokens.shape[1] != c.block_size:
            raise ValueError(f"MaskGIT takes all {c.block_size} image tokens (masked ones as id {c.mask_id}); "
                             f"got {tokens.shape[1]}")
        cls = constrain(self.cls_embedding(labels), "batch", None)[:, None]
        x = jnp.concatenate([cls, constrain(self.tok_embeddings(tokens), "batch", None, None)], axis=1)
        x = x.astype(jnp.dtype(c.dtype))
        rope = jnp.asarray(maskgit_rope(c))

        def apply(layer, x):
            return layer(x, rope)[0]

        if c.remat:
            apply = nnx.remat(apply)
        for layer in self.layers:
            x = apply(layer, constrain(x, "batch", None, None))
        logits = self.output(self.norm(x[:, 1:]).astype(jnp.float32)).astype(jnp.float32)
        return constrain(logits, "batch", None, None)
