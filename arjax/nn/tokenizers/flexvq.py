"""FlexVAR's tokenizer: a LlamaGen VQ-16 whose scales are quantised independently, NHWC.

Scale k's tokens are the nearest l2-normalised codes of the l2-normalised latent area-resized to
pn_k x pn_k. Nothing is accumulated across scales (unlike VAR's residual quantiser), so any
schedule can be encoded, and the image is decoded from the last scale's tokens alone. The stored
codebook need not be unit-norm: it is normalised at every use, as in the reference.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.adaln import l2_normalize
from arjax.nn.tokenizers.vae_blocks import ConvLayout, Decoder, Encoder, conv
from arjax.ops import scales
from arjax.ops.resample import resize_area, resize_bicubic

FLEXVAR_SCHEDULE = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@dataclasses.dataclass(frozen=True)
class FlexVQConfig(ConvLayout):
    vocab_size: int = 8912          # the release's (sic) codebook size
    z_channels: int = 32            # Cvae: codebook dimension (same meaning as VQVAEConfig.z_channels)
    enc_channels: int = 256         # encoder output channels (LlamaGen's `z_channels`)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2         # encoder; the decoder has one more per level
    using_sa: bool = True
    using_mid_sa: bool = True
    patch_nums: tuple[int, ...] = FLEXVAR_SCHEDULE


class FlexQuantizer(nnx.Module):
    def __init__(self, cfg: FlexVQConfig, *, rngs: nnx.Rngs):
        self.patch_nums = cfg.patch_nums
        v = cfg.vocab_size  # reference init: uniform(+-1/V), then l2-normalised
        e = jax.random.uniform(rngs.params(), (v, cfg.z_channels), jnp.float32, -1.0 / v, 1.0 / v)
        self.embedding = nnx.Param(l2_normalize(e))

    def codebook(self):
        return l2_normalize(self.embedding[...])

    def lookup(self, idx):
        """Indices (...) -> normalised codes (..., Cvae)."""
        return jnp.take(self.codebook(), idx, axis=0)

    def nearest(self, z):
        """Nearest normalised code of (already normalised) z (..., C), same expansion as the reference;
        argmin keeps the first index on ties."""
        e = self.codebook()
        d = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(e * e, -1)
             - 2 * jnp.einsum("...c,vc->...v", z, e, precision=jax.lax.Precision.HIGHEST))
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def quantize(self, f, patch_nums=None):
        """f (B, H, W, C) -> (per-scale (B, pn*pn) int32 indices, per-scale straight-through
        quantised maps (B, pn, pn, C), per-scale normalised latents z (B, pn, pn, C))."""
        pns = self.patch_nums if patch_nums is None else tuple(patch_nums)
        b = f.shape[0]
        idx_list, q_list, z_list = [], [], []
        for pn in pns:
            z = l2_normalize(resize_area(f, pn))
            idx = self.nearest(jax.lax.stop_gradient(z))
            q = self.lookup(idx)
            idx_list.append(idx.reshape(b, pn * pn))
            q_list.append(z + jax.lax.stop_gradient(q - z))
            z_list.append(z)
        return idx_list, q_list, z_list

    def split_scales(self, idx, patch_nums=None):
        """(B, L) -> list of (B, pn, pn) index maps."""
        pns = self.patch_nums if patch_nums is None else tuple(patch_nums)
        if idx.shape[1] != scales.seq_len(pns):
            raise ValueError(f"{idx.shape[1]} tokens do not fit schedule {pns} ({scales.seq_len(pns)} tokens)")
        b = idx.shape[0]
        return [idx[:, s:e].reshape(b, pn, pn) for (s, e), pn in zip(scales.begin_ends(pns), pns)]

    def next_input(self, idx_map, next_pn: int):
        """Scale k's index map (B, pn, pn) -> the next scale's input (B, next_pn**2, C): its codes
        bicubic-resized to next_pn (only the previous scale, no cumulative sum)."""
        b = idx_map.shape[0]
        return resize_bicubic(self.lookup(idx_map), next_pn).reshape(b, next_pn * next_pn, -1)

    def indices_to_var_input(self, idx, patch_nums=None):
        """Teacher-forcing input of scales 1..K-1: (B, L - pn_0**2, C)."""
        pns = self.patch_nums if patch_nums is None else tuple(patch_nums)
        maps = self.split_scales(idx, pns)
        return jnp.concatenate([self.next_input(m, pn) for m, pn in zip(maps[:-1], pns[1:])], axis=1)


class FlexVQVAE(nnx.Module):
    def __init__(self, cfg: FlexVQConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        arch = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                    z_channels=cfg.enc_channels, using_sa=cfg.using_sa, using_mid_sa=cfg.using_mid_sa)
        # LlamaGen's VQ-16 Encoder/Decoder have the same graph as VQGAN's: only the names differ
        # (mapped in arjax.convert.flexvar).
        self.encoder = Encoder(**arch, rngs=rngs)
        self.decoder = Decoder(**arch, rngs=rngs)
        self.quant_conv = conv(cfg.enc_channels, cfg.z_channels, 1, rngs)
        self.post_quant_conv = conv(cfg.z_channels, cfg.enc_channels, 1, rngs)
        self.quantize = FlexQuantizer(cfg, rngs=rngs)

    def features(self, images):
        """images (B, H, W, 3) in [-1, 1] -> quantiser input f (B, h, w, Cvae)."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images, patch_nums=None):
        """images -> (B, L) int32 tokens, scales concatenated coarse to fine."""
        idx_list, _, _ = self.quantize.quantize(self.features(images), patch_nums)
        return jnp.concatenate(idx_list, axis=1)

    def decode_latent(self, q):
        """Quantised map (B, pn, pn, Cvae) -> raw decoder output (B, ds*pn, ds*pn, 3), not clamped."""
        return self.decoder(self.post_quant_conv(q))

    def decode_map(self, idx_map):
        """Index map (B, pn, pn) -> raw decoder output (not clamped: the reference's `decode_code`)."""
        return self.decode_latent(self.quantize.lookup(idx_map))

    def decode(self, idx, patch_nums=None):
        """(B, L) -> images (B, H, W, 3) in [-1, 1], decoded from the last scale's tokens only."""
        last = self.quantize.split_scales(idx, patch_nums)[-1]
        return jnp.clip(self.decode_map(last), -1.0, 1.0)

    def reconstruct_scales(self, images, patch_nums=None, beta: float = 0.25, features=None):
        """Tokenizer training: (per-scale reconstructions (B, ds*pn, ds*pn, 3), VQ loss, per-scale
        indices (B, pn*pn)). The caller compares reconstruction k with the image area-resized to
        ds*pn_k. The VQ loss is, averaged over scales, codebook ||q - sg(z)||^2 + beta * commitment
        ||sg(q) - z||^2 (means over elements, normalised vectors), as LlamaGen's quantiser."""
        f = self.features(images) if features is None else features  # the trainer passes its own
        idx_list, q_list, z_list = self.quantize.quantize(f, patch_nums)
        recs, loss = [], 0.0
        for idx, q_st, z in zip(idx_list, q_list, z_list):
            q = self.quantize.lookup(idx.reshape(z.shape[:-1]))
            loss = loss + jnp.mean(jnp.square(q - jax.lax.stop_gradient(z)))
            loss = loss + beta * jnp.mean(jnp.square(jax.lax.stop_gradient(q) - z))
            recs.append(self.decode_latent(q_st))
        return recs, loss / len(idx_list), idx_list
