"""Convolutional encoder and decoder of the VQGAN family (as used by VAR's tokenizer), NHWC.

Attribute names mirror the PyTorch module tree (`down[i].block[j].conv1`, `mid.attn_1`, ...) so that
checkpoint conversion is a mechanical rename.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.init import torch_default_bias, torch_default_kernel


def conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1, padding=None) -> nnx.Conv:
    pad = k // 2 if padding is None else padding
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad if isinstance(pad, str) else ((pad, pad), (pad, pad)),
                    kernel_init=torch_default_kernel(), bias_init=torch_default_bias(cin * k * k), rngs=rngs)


def group_norm(c: int, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.GroupNorm:
    return nnx.GroupNorm(c, num_groups=32, epsilon=eps, use_fast_variance=False, rngs=rngs)


class ConvLayout:
    """Mixin for frozen tokenizer config dataclasses built on this encoder/decoder: tuple fields after
    JSON round trips (lists) so configs stay hashable, and the image size a schedule implies."""

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "patch_nums", tuple(self.patch_nums))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.norm1 = group_norm(cin, rngs)
        self.conv1 = conv(cin, cout, 3, rngs)
        self.norm2 = group_norm(cout, rngs)
        self.conv2 = conv(cout, cout, 3, rngs)
        self.nin_shortcut = conv(cin, cout, 1, rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions, scaled by C**-0.5."""

    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.norm = group_norm(c, rngs)
        self.qkv = conv(c, 3 * c, 1, rngs)
        self.proj_out = conv(c, c, 1, rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
        att = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) * c ** -0.5, axis=-1)
        out = jnp.einsum("bqk,bkc->bqc", att, v).reshape(b, h, w, c)
        return x + self.proj_out(out)


class Downsample(nnx.Module):
    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.conv = conv(c, c, 3, rngs, stride=2, padding=0)

    def __call__(self, x):
        # PyTorch reference pads only right and bottom before the stride-2 conv.
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.conv = conv(c, c, 3, rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Mid(nnx.Module):
    def __init__(self, c: int, use_attn: bool, *, rngs: nnx.Rngs):
        self.block_1 = ResnetBlock(c, c, rngs=rngs)
        self.attn_1 = AttnBlock(c, rngs=rngs) if use_attn else None
        self.block_2 = ResnetBlock(c, c, rngs=rngs)

    def __call__(self, x):
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Level(nnx.Module):
    """One resolution: res blocks (each followed by attention at the lowest level), then resample."""

    def __init__(self, cin: int, cout: int, n_blocks: int, use_attn: bool, resample, *, rngs: nnx.Rngs):
        self.block = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, rngs=rngs) for i in range(n_blocks)])
        self.attn = nnx.List([AttnBlock(cout, rngs=rngs) for _ in range(n_blocks)] if use_attn else [])
        self.resample = resample(cout, rngs=rngs) if resample is not None else None

    def __call__(self, x):
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x if self.resample is None else self.resample(x)


class Encoder(nnx.Module):
    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, z_channels: int, in_channels: int = 3,
                 using_sa: bool = True, using_mid_sa: bool = True, rngs: nnx.Rngs):
        n = len(ch_mult)
        chans = [ch] + [ch * m for m in ch_mult]
        self.conv_in = conv(in_channels, ch, 3, rngs)
        self.down = nnx.List([
            Level(chans[i], chans[i + 1], num_res_blocks, using_sa and i == n - 1,
                  Downsample if i != n - 1 else None, rngs=rngs) for i in range(n)])
        self.mid = Mid(chans[-1], using_mid_sa, rngs=rngs)
        self.norm_out = group_norm(chans[-1], rngs)
        self.conv_out = conv(chans[-1], z_channels, 3, rngs)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, z_channels: int, out_channels: int = 3,
                 using_sa: bool = True, using_mid_sa: bool = True, rngs: nnx.Rngs):
        n = len(ch_mult)
        chans = [ch * m for m in ch_mult]
        self.conv_in = conv(z_channels, chans[-1], 3, rngs)
        self.mid = Mid(chans[-1], using_mid_sa, rngs=rngs)
        # up[i] works at the resolution of encoder level i; execution runs from up[n-1] to up[0].
        self.up = nnx.List([
            Level(chans[min(i + 1, n - 1)], chans[i], num_res_blocks + 1, using_sa and i == n - 1,
                  Upsample if i != 0 else None, rngs=rngs) for i in range(n)])
        self.norm_out = group_norm(chans[0], rngs)
        self.conv_out = conv(chans[0], out_channels, 3, rngs)

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
