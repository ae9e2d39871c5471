"""LlamaGen: class-conditional raster-order next-token prediction ("Autoregressive Model Beats
Diffusion", Sun et al. 2024).

A Llama decoder (pre-norm RMSNorm, SwiGLU, no biases) over [class token | image tokens], with 2D RoPE
as the only position signal. Submodule names mirror the PyTorch keys (`layers.{i}.attention.wqkv`, ...),
so conversion needs no renames.

RoPE follows the reference exactly: frequencies per axis w_m = base^(-2m / (hd/2)), the first hd/4 of
the hd/2 angles are the token's row, the rest its column, pairs (x[2m], x[2m+1]) are interleaved, and
the class-token rows are all zero (cos = sin = 0, not the identity), so q and k vanish there.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.ops.attention import attention, dense_attention
from arjax.parallel import constrain


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


class LlamaDims:
    """The sizes a config of Llama blocks derives from its fields (dim, n_head, block_size, multiple_of,
    ffn_dim_multiplier): shared by LlamaGen's and MaskGIT's configs."""

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


@dataclasses.dataclass(frozen=True)
class LlamaGenConfig(LlamaDims):
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None        # None = n_head; fewer = grouped-query attention
    multiple_of: int = 256              # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = 16384
    num_classes: int = 1000             # label num_classes is the null (unconditional) class
    cls_token_num: int = 1
    block_size: int = 256               # image tokens: a grid x grid raster
    class_dropout_prob: float = 0.1     # training: labels -> null class at this rate
    attn_impl: str = "auto"             # arjax.ops.attention impl (teacher forcing)
    dtype: str = "float32"              # compute dtype of the layers; params, RMSNorm and RoPE stay float32
    remat: bool = False                 # recompute each layer in the backward pass

    def __post_init__(self):
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.dim % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"dim={self.dim} must divide into n_head={self.n_head} heads, and n_head into "
                             f"n_kv_head={self.n_kv_head} groups")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4; got {self.head_dim}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"block_size={self.block_size} image tokens is not a square grid")
        if self.cls_token_num != 1:  # the class embedder yields one token; several are the text model's prefix
            raise ValueError(f"class-conditional LlamaGen has one class token; got cls_token_num={self.cls_token_num}")

    @property
    def seq_len(self) -> int:
        return self.cls_token_num + self.block_size

    def num_params(self) -> int:
        kv = self.n_kv_head * self.head_dim
        layer = self.dim * (self.dim + 2 * kv) + self.dim ** 2 + 3 * self.dim * self.ffn_hidden + 2 * self.dim
        return (self.n_layer * layer + self.dim + 2 * self.vocab_size * self.dim
                + (self.num_classes + (self.class_dropout_prob > 0)) * self.dim)


# The released c2i sizes: (dim, n_layer, n_head) from the LlamaGen paper's model table (B 111M, L 343M,
# XL 775M, XXL 1.4B, 3B 3.1B parameters). The paper gives no grouped-query setting, and the 3B count is
# only reached with n_kv_head = n_head, so all use full multi-head attention.
PRESETS = {
    "B": dict(dim=768, n_layer=12, n_head=12),
    "L": dict(dim=1024, n_layer=24, n_head=16),
    "XL": dict(dim=1280, n_layer=36, n_head=20),
    "XXL": dict(dim=1536, n_layer=48, n_head=24),
    "3B": dict(dim=3200, n_layer=24, n_head=32),
}
PAPER_PARAMS = {"B": 111e6, "L": 343e6, "XL": 775e6, "XXL": 1.4e9, "3B": 3.1e9}


def preset(name: str, **kw) -> LlamaGenConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown LlamaGen size {name!r}; known: {sorted(PRESETS)}")
    return LlamaGenConfig(**{**PRESETS[name], **kw})


@functools.lru_cache(maxsize=8)
def rope_table(cfg: LlamaGenConfig) -> np.ndarray:
    """(cls_token_num + block_size, head_dim // 2, 2) float32: [..., 0] = cos, [..., 1] = sin. Class rows
    are zero; image token j (row j // grid, col j % grid) has angles [row * w, col * w]."""
    half = cfg.head_dim // 2
    w = np.float32(1.0) / (np.float32(cfg.rope_base) ** (np.arange(0, half, 2, dtype=np.float32) / np.float32(half)))
    t = np.arange(cfg.grid, dtype=np.float32)
    f = np.outer(t, w).astype(np.float32)                     # (grid, half / 2)
    angles = np.concatenate([np.broadcast_to(f[:, None], (cfg.grid, cfg.grid, half // 2)),
                             np.broadcast_to(f[None, :], (cfg.grid, cfg.grid, half // 2))], -1).reshape(-1, half)
    table = np.stack([np.cos(angles), np.sin(angles)], -1).astype(np.float32)
    table = np.concatenate([np.zeros((cfg.cls_token_num, half, 2), np.float32), table])
    table.flags.writeable = False  # cached: shared by every caller
    return table


def apply_rope(x, rope):
    """x (B, L, H, D), rope (L, D/2, 2): rotate the interleaved pairs (x[2m], x[2m+1]), in float32."""
    xs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    c, s = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
    out = jnp.stack([xs[..., 0] * c - xs[..., 1] * s, xs[..., 1] * c + xs[..., 0] * s], -1)
    return out.reshape(x.shape).astype(x.dtype)


def drop_labels(key, labels, prob: float, num_classes: int):
    """Class dropout for CFG training: each label becomes the null class `num_classes` with probability `prob`."""
    return jnp.where(jax.random.uniform(key, labels.shape) < prob, num_classes, labels).astype(labels.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return (y * self.weight[...]).astype(x.dtype)


def _linear(din, dout, rngs, dtype, init=nnx.initializers.normal(0.02)):
    return nnx.Linear(din, dout, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaGenConfig, *, rngs: nnx.Rngs, mask: str = "causal"):
        # mask: "causal" (LlamaGen) or "none" (bidirectional, MaskGIT), for the uncached path
        self.n_head, self.n_kv_head, self.head_dim, self.impl = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.attn_impl
        self.mask = mask
        dtype = jnp.dtype(cfg.dtype)
        # output rows [q (n_head * hd); k (n_kv_head * hd); v (n_kv_head * hd)], as the reference's wqkv
        self.wqkv = _linear(cfg.dim, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, rngs, dtype)
        self.wo = _linear(cfg.n_head * cfg.head_dim, cfg.dim, rngs, dtype)

    def _heads(self, x):
        """Repeat each kv head for its group of query heads (head h uses kv head h // group)."""
        return jnp.repeat(x, self.n_head // self.n_kv_head, axis=2) if self.n_head != self.n_kv_head else x

    def __call__(self, x, rope, *, cache=None, pos=None):
        """x (B, L, C), rope (L, D/2, 2) of x's positions. Without a cache: attention over x under `mask`.
        With cache (k, v) (B, S, Hkv, D) and start position `pos`: x's keys are written at pos..pos+L-1
        and queries see every slot up to their own; returns (out, updated cache)."""
        b, l, _ = x.shape
        hq, hk, d = self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.head_dim
        qkv = self.wqkv(x)
        q = apply_rope(qkv[..., :hq].reshape(b, l, -1, d), rope)
        k = apply_rope(qkv[..., hq:hq + hk].reshape(b, l, -1, d), rope)
        v = qkv[..., hq + hk:].reshape(b, l, -1, d)
        if cache is None:
            out = attention(q, self._heads(k), self._heads(v), mask=self.mask, impl=self.impl)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), pos, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), pos, axis=1)
            # unfilled (zero) slots are masked, as the reference's tril row over its whole cache
            valid = jnp.arange(k.shape[1])[None, :] <= pos + jnp.arange(l)[:, None]
            out = dense_attention(q, self._heads(k).astype(q.dtype), self._heads(v).astype(q.dtype), valid)
            cache = (k, v)
        return self.wo(out.reshape(b, l, hq)), cache


class FeedForward(nnx.Module):
    def __init__(self, cfg: LlamaGenConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.w1 = _linear(cfg.dim, cfg.ffn_hidden, rngs, dtype)   # gate
        self.w3 = _linear(cfg.dim, cfg.ffn_hidden, rngs, dtype)   # up
        self.w2 = _linear(cfg.ffn_hidden, cfg.dim, rngs, dtype)   # down

    def __call__(self, x):
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: LlamaGenConfig, *, rngs: nnx.Rngs, mask: str = "causal"):
        self.attention = Attention(cfg, rngs=rngs, mask=mask)
        self.feed_forward = FeedForward(cfg, rngs=rngs)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def __call__(self, x, rope, cache=None, pos=None):
        h, cache = self.attention(self.attention_norm(x), rope, cache=cache, pos=pos)
        h = x + h
        return h + self.feed_forward(self.ffn_norm(h)), cache


class LabelEmbedder(nnx.Module):
    def __init__(self, cfg: LlamaGenConfig, *, rngs: nnx.Rngs):
        # the null-class row exists only when labels are ever dropped (as the reference)
        rows = cfg.num_classes + (cfg.class_dropout_prob > 0)
        self.embedding_table = nnx.Embed(rows, cfg.dim, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)

    def __call__(self, labels):
        return self.embedding_table(labels)


class LlamaGen(nnx.Module):
    def __init__(self, cfg: LlamaGenConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)  # the reference's initialize_weights: N(0, 0.02), output zero
        self.cls_embedding = LabelEmbedder(cfg, rngs=rngs)
        self.tok_embeddings = nnx.Embed(cfg.vocab_size, cfg.dim, embedding_init=init, rngs=rngs)
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = _linear(cfg.dim, cfg.vocab_size, rngs, None, init=nnx.initializers.zeros)

    def drop_labels(self, labels, key):
        return drop_labels(key, labels, self.cfg.class_dropout_prob, self.cfg.num_classes)

    def embed_classes(self, labels):
        """labels (B,) in [0, num_classes] -> the class token (B, 1, C)."""
        return constrain(self.cls_embedding(labels), "batch", None)[:, None]

    def embed_tokens(self, tokens):
        return constrain(self.tok_embeddings(tokens), "batch", None, None)

    def run_layers(self, x, rope, caches=None, pos=None):
        """Hidden states -> (logits (B, L, V) float32, updated caches or None)."""
        x = x.astype(jnp.dtype(self.cfg.dtype))

        def apply(layer, x, rope, cache, pos):
            return layer(x, rope, cache, pos)

        if self.cfg.remat:
            apply = nnx.remat(apply)
        new = []
        for i, layer in enumerate(self.layers):
            x, c = apply(layer, constrain(x, "batch", None, None), rope, None if caches is None else caches[i], pos)
            new.append(c)
        logits = self.output(self.norm(x).astype(jnp.float32)).astype(jnp.float32)
        return constrain(logits, "batch", None, None), (None if caches is None else new)

    # -- teacher forcing ----------------------------------------------------------------------------
    def __call__(self, labels, tokens):
        """labels (B,), tokens (B, n <= block_size) -> logits (B, n, V) float32; position t predicts
        tokens[:, t] from the class token and tokens[:, :t]."""
        n = tokens.shape[1]
        x = jnp.concatenate([self.embed_classes(labels), self.embed_tokens(tokens[:, :n - 1])], axis=1)
        return self.run_layers(x, jnp.asarray(rope_table(self.cfg)[:n]))[0]

    # -- KV-cached steps ----------------------------------------------------------------------------
    def init_cache(self, batch: int, dtype=None):
        """Per layer (k, v), each (B, cls_token_num + block_size, n_kv_head, head_dim), zeros."""
        c = self.cfg
        shape = (batch, c.seq_len, c.n_kv_head, c.head_dim)
        dtype = jnp.dtype(dtype or c.dtype)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(c.n_layer)]

    def step(self, x, pos, caches):
        """x (B, T, C) embedded inputs at positions pos..pos+T-1 (pos may be traced; 0 = class token,
        1 + j = image token j) -> (logits (B, T, V) float32, updated caches). The logits at position p
        predict image token p (the class token's predict token 0)."""
        rope = jax.lax.dynamic_slice_in_dim(jnp.asarray(rope_table(self.cfg)), pos, x.shape[1], axis=0)
        return self.run_layers(x, rope, caches, pos)
