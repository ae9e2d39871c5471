"""VAR's multi-scale residual VQ tokenizer (VQVAE with phi-refined residual quantisation), NHWC.

Tokens of scale k are the codebook indices of the residual left by scales < k, area-downsampled to
pn_k x pn_k. Each scale's embedding is bicubic-upsampled to the full latent size and refined by a
phi conv before it is added to f-hat.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.init import torch_trunc_normal
from arjax.nn.tokenizers.vae_blocks import ConvLayout, Decoder, Encoder, conv
from arjax.ops import scales
from arjax.ops.resample import resize_area, resize_bicubic


@dataclasses.dataclass(frozen=True)
class VQVAEConfig(ConvLayout):
    vocab_size: int = 4096
    z_channels: int = 32            # Cvae: codebook dimension
    ch: int = 160                   # released tokenizer: vae_ch160v4096z32
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True
    using_mid_sa: bool = True
    quant_conv_ks: int = 3
    quant_resi: float = 0.5         # phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4       # 0: one phi per scale, 1: one shared phi, K: K partially shared phis
    patch_nums: tuple[int, ...] = scales.VAR_SCHEDULES[256]

    @property
    def num_phis(self) -> int:
        if abs(self.quant_resi) <= 1e-6:
            return 0
        return len(self.patch_nums) if self.share_quant_resi == 0 else self.share_quant_resi


class Phi(nnx.Module):
    """Residual refinement conv: (1 - r) * h + r * conv3x3(h)."""

    def __init__(self, c: int, ratio: float, *, rngs: nnx.Rngs):
        self.conv = conv(c, c, 3, rngs)
        self.ratio = abs(ratio)

    def __call__(self, h):
        return h * (1 - self.ratio) + self.conv(h) * self.ratio


class MultiScaleQuantizer(nnx.Module):
    def __init__(self, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        self.patch_nums = cfg.patch_nums
        self.embedding = nnx.Param(torch_trunc_normal(0.02)(rngs.params(), (cfg.vocab_size, cfg.z_channels)))
        self.quant_resi = nnx.List([Phi(cfg.z_channels, cfg.quant_resi, rngs=rngs) for _ in range(cfg.num_phis)])

    def phi(self, si: int, h):
        if not len(self.quant_resi):
            return h
        return self.quant_resi[scales.phi_index(si, len(self.patch_nums), len(self.quant_resi))](h)

    def lookup(self, idx):
        return jnp.take(self.embedding[...], idx, axis=0)

    def nearest(self, z):
        """Index of the nearest code (squared L2), z: (..., C). Same expansion as the reference."""
        e = self.embedding[...]
        d = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(e * e, -1)
             - 2 * jnp.einsum("...c,vc->...v", z, e, precision=jax.lax.Precision.HIGHEST))
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def upsample_to_full(self, si: int, h):
        """Scale si's embedding map (B, pn, pn, C) -> its phi-refined contribution to f-hat."""
        full = self.patch_nums[-1]
        return self.phi(si, resize_bicubic(h, full))

    def quantize(self, f, *, cumulative: bool = False):
        """f: (B, H, W, C) -> (list of per-scale (B, pn*pn) indices, f_hat); with cumulative=True the
        list of f_hat after each scale instead of the last (the training losses use every one).
        Gradients reach the codebook and phi convs through f_hat, never f through the argmin."""
        b = f.shape[0]
        f_rest, f_hat, idx_list, fhats = jax.lax.stop_gradient(f), jnp.zeros_like(f), [], []
        for si, pn in enumerate(self.patch_nums):
            idx = self.nearest(resize_area(f_rest, pn))
            h = self.upsample_to_full(si, self.lookup(idx))
            f_hat, f_rest = f_hat + h, f_rest - jax.lax.stop_gradient(h)
            idx_list.append(idx.reshape(b, pn * pn))
            fhats.append(f_hat)
        return idx_list, (fhats if cumulative else f_hat)

    def quantize_self_correcting(self, f, key, max_rate: float):
        """Training targets that teach the transformer to repair its own earlier mistakes.

        The index-code form of Infinity's bitwise self-correction (arXiv 2412.04431, sec. 3.3): while
        quantising f scale by scale, each image draws a rate r ~ U[0, max_rate] and each of its tokens is
        replaced, with probability r, by a uniformly random code before it is added to f_hat. A scale's
        target is the nearest code to the residual left by the *corrupted* f_hat, i.e. the correction
        of the errors fed so far, and the next scale's input is built from the corrupted f_hat, as at
        sampling time, where the inputs are the model's own (imperfect) draws.

        f: (B, H, W, C). Returns (targets (B, L) int32, fed (B, L) int32: the tokens that built f_hat,
        var_input (B, L - pn_0**2, C): what `indices_to_var_input(fed)` gives). max_rate=0 gives the
        plain `quantize` tokens as both targets and fed tokens."""
        b, vocab = f.shape[0], self.embedding.shape[0]
        k_rate, k_where, k_code = jax.random.split(key, 3)
        rate = jax.random.uniform(k_rate, (b, 1, 1), maxval=max_rate)
        f_rest, f_hat = jax.lax.stop_gradient(f), jnp.zeros_like(f)
        targets, fed, inputs = [], [], []
        for si, pn in enumerate(self.patch_nums):
            idx = self.nearest(resize_area(f_rest, pn))
            replace = jax.random.uniform(jax.random.fold_in(k_where, si), idx.shape) < rate
            random_code = jax.random.randint(jax.random.fold_in(k_code, si), idx.shape, 0, vocab)
            used = jnp.where(replace, random_code, idx)
            h = self.upsample_to_full(si, self.lookup(used))
            f_hat, f_rest = f_hat + h, f_rest - h
            targets.append(idx.reshape(b, pn * pn))
            fed.append(used.reshape(b, pn * pn))
            if si + 1 < len(self.patch_nums):
                inputs.append(resize_area(f_hat, self.patch_nums[si + 1]).reshape(b, -1, f.shape[-1]))
        return (jnp.concatenate(targets, 1), jnp.concatenate(fed, 1),
                jax.lax.stop_gradient(jnp.concatenate(inputs, 1)))

    def split_scales(self, idx):
        """(B, L) -> list of (B, pn, pn) index maps."""
        b = idx.shape[0]
        return [idx[:, s:e].reshape(b, pn, pn)
                for (s, e), pn in zip(scales.begin_ends(self.patch_nums), self.patch_nums)]

    def indices_to_fhat(self, idx, *, cumulative: bool = False):
        """(B, L) -> f_hat (B, H, W, C); with cumulative=True, the list of f_hat after each scale."""
        f_hat, outs = 0.0, []
        for si, m in enumerate(self.split_scales(idx)):
            f_hat = f_hat + self.upsample_to_full(si, self.lookup(m))
            outs.append(f_hat)
        return outs if cumulative else f_hat

    def indices_to_var_input(self, idx):
        """Teacher-forcing input: for scales 1..K-1, f_hat after scale k-1 area-resized to pn_k.
        Returns (B, L - pn_0**2, C)."""
        b = idx.shape[0]
        fhats = self.indices_to_fhat(idx, cumulative=True)
        return jnp.concatenate(
            [resize_area(fh, pn).reshape(b, pn * pn, -1) for fh, pn in zip(fhats[:-1], self.patch_nums[1:])],
            axis=1)

    def next_input(self, si: int, f_hat, h):
        """Sampler step: add scale si's embedding map h (B, pn, pn, C) to f_hat; return the new
        f_hat and the next scale's input map (f_hat area-resized to pn_{si+1}), or f_hat itself last."""
        f_hat = f_hat + self.upsample_to_full(si, h)
        if si == len(self.patch_nums) - 1:
            return f_hat, f_hat
        return f_hat, resize_area(f_hat, self.patch_nums[si + 1])


class MultiScaleVQVAE(nnx.Module):
    def __init__(self, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        arch = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                    z_channels=cfg.z_channels, using_sa=cfg.using_sa, using_mid_sa=cfg.using_mid_sa)
        self.encoder = Encoder(**arch, rngs=rngs)
        self.decoder = Decoder(**arch, rngs=rngs)
        self.quant_conv = conv(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, rngs)
        self.post_quant_conv = conv(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, rngs)
        self.quantize = MultiScaleQuantizer(cfg, rngs=rngs)

    def features(self, images):
        """images (B, H, W, 3) in [-1, 1] -> quantiser input f (B, h, w, Cvae)."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images):
        """images -> (B, L) int32 token indices, scales concatenated coarse to fine."""
        return self.tokens_from_features(self.features(images))

    def tokens_from_features(self, f):
        """Quantiser input f (B, h, w, Cvae) -> (B, L) int32 token indices."""
        return jnp.concatenate(self.quantize.quantize(f)[0], axis=1)

    def fhat_to_img(self, f_hat):
        return jnp.clip(self.decoder(self.post_quant_conv(f_hat)), -1.0, 1.0)

    def decode(self, idx):
        """(B, L) -> images (B, H, W, 3) in [-1, 1]."""
        return self.fhat_to_img(self.quantize.indices_to_fhat(idx))
