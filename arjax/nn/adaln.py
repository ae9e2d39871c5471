"""Transformer blocks of the next-scale family: AdaLN-conditioned self-attention + MLP.

Attribute names mirror the PyTorch VAR modules (`attn.mat_qkv`, `ffn.fc1`, `ada_lin`, ...).
Attention returns its (k, v) so the sampler can carry a KV cache as plain arrays.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.init import torch_trunc_normal
from arjax.ops.attention import attention
from arjax.parallel import constrain


def layer_norm(x, eps: float):
    """LayerNorm without affine parameters, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def linear(din: int, dout: int, std: float, rngs: nnx.Rngs, *, use_bias: bool = True, dtype=None) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=torch_trunc_normal(std),
                      bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)


def l2_normalize(x, eps: float = 1e-12):
    """`F.normalize`: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SelfAttention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, attn_l2_norm: bool, std: float, dtype=None, rngs: nnx.Rngs):
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        self.mat_qkv = linear(dim, 3 * dim, std, rngs, use_bias=False, dtype=dtype)
        self.q_bias = nnx.Param(jnp.zeros((dim,)))
        self.v_bias = nnx.Param(jnp.zeros((dim,)))
        if attn_l2_norm:
            # log of the per-head logit scale, clamped at log(100) before exp.
            self.scale_mul_1H11 = nnx.Param(jnp.full((1, num_heads, 1, 1), math.log(4.0), jnp.float32))
        self.proj = linear(dim, dim, std, rngs, dtype=dtype)

    def qkv(self, x):
        b, l, c = x.shape
        bias = jnp.concatenate([self.q_bias[...], jnp.zeros_like(self.q_bias[...]), self.v_bias[...]])
        qkv = (self.mat_qkv(x) + bias.astype(x.dtype)).reshape(b, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.attn_l2_norm:
            scale_mul = jnp.exp(jnp.minimum(self.scale_mul_1H11[...], math.log(100.0))).reshape(1, 1, -1, 1)
            q = (l2_normalize(q.astype(jnp.float32)) * scale_mul).astype(x.dtype)
            k = l2_normalize(k.astype(jnp.float32)).astype(x.dtype)
        return q, k, v

    def __call__(self, x, *, scale_lens=None, mask="block_causal", impl="auto", cache=None):
        """cache: (k, v) of earlier scales; when given, queries attend to all of it plus themselves."""
        b, l, c = x.shape
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = jnp.concatenate([cache[0], k], 1), jnp.concatenate([cache[1], v], 1)
            mask = "none"
        scale = 1.0 if self.attn_l2_norm else 0.25 / math.sqrt(self.head_dim)
        out = attention(q, k, v, scale_lens=scale_lens, mask=mask, impl=impl, scale=scale)
        return self.proj(out.reshape(b, l, c)), (k, v)


class FFN(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, std: float, dtype=None, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, std, rngs, dtype=dtype)
        self.fc2 = linear(hidden, dim, std, rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class AdaLNSelfAttn(nnx.Module):
    """x + g1 * attn(LN(x)(1+s1)+b1), then x + g2 * ffn(LN(x)(1+s2)+b2); (g, s, b) from the class."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, *, mlp_ratio: float, norm_eps: float,
                 shared_aln: bool, attn_l2_norm: bool, std: float, dtype=None, rngs: nnx.Rngs):
        self.dim, self.norm_eps, self.shared_aln = dim, norm_eps, shared_aln
        self.attn = SelfAttention(dim, num_heads, attn_l2_norm=attn_l2_norm, std=std, dtype=dtype, rngs=rngs)
        self.ffn = FFN(dim, round(dim * mlp_ratio), std=std, dtype=dtype, rngs=rngs)
        if shared_aln:
            self.ada_gss = nnx.Param(jax.random.normal(rngs.params(), (1, 1, 6, dim)) / dim ** 0.5)
        else:
            self.ada_lin = linear(cond_dim, 6 * dim, std, rngs, dtype=dtype)

    def modulation(self, cond):
        """cond: class embedding (B, D), or with shared AdaLN the shared (B, 1, 6, C) output."""
        if self.shared_aln:
            return self.ada_gss[...] + cond
        return self.ada_lin(constrain(jax.nn.silu(cond), "batch", None)).reshape(-1, 1, 6, self.dim)

    def __call__(self, x, cond, *, cache=None, **attn_kw):
        ada = self.modulation(cond).astype(x.dtype)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada[:, :, i] for i in range(6))
        h, kv = self.attn(layer_norm(x, self.norm_eps) * (1 + scale1) + shift1, cache=cache, **attn_kw)
        x = x + h * gamma1
        x = x + self.ffn(layer_norm(x, self.norm_eps) * (1 + scale2) + shift2) * gamma2
        return x, kv


class AdaLNBeforeHead(nnx.Module):
    def __init__(self, dim: int, cond_dim: int, *, norm_eps: float, std: float, rngs: nnx.Rngs):
        self.dim, self.norm_eps = dim, norm_eps
        self.ada_lin = linear(cond_dim, 2 * dim, std, rngs)

    def __call__(self, x, cond):
        ada = self.ada_lin(constrain(jax.nn.silu(cond), "batch", None)).reshape(-1, 1, 2, self.dim)
        return layer_norm(x, self.norm_eps) * (1 + ada[:, :, 0]) + ada[:, :, 1]
