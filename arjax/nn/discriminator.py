"""PatchGAN discriminator (pix2pix / VQGAN lineage) for tokenizer training, NHWC.

A stack of 4x4 convolutions: stride 2 while downsampling, then two stride-1 layers, ending in one
real/fake logit per receptive-field patch. GroupNorm replaces the usual BatchNorm: no running
statistics to carry in the state, and the same result on any device count or batch split.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from arjax.nn.init import torch_default_bias, torch_default_kernel


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    ch: int = 64
    num_layers: int = 3  # stride-2 convolutions; the receptive field is 70 px for 3


def _conv(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (4, 4), strides=stride, padding=((1, 1), (1, 1)),
                    kernel_init=torch_default_kernel(), bias_init=torch_default_bias(cin * 16), rngs=rngs)


class PatchDiscriminator(nnx.Module):
    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        chans = [cfg.ch * min(2 ** i, 8) for i in range(cfg.num_layers + 1)]
        self.conv_in = _conv(3, chans[0], 2, rngs)
        self.convs = nnx.List([_conv(chans[i], chans[i + 1], 2 if i + 1 < cfg.num_layers else 1, rngs)
                               for i in range(cfg.num_layers)])
        self.norms = nnx.List([nnx.GroupNorm(c, num_groups=min(32, c), rngs=rngs) for c in chans[1:]])
        self.conv_out = _conv(chans[-1], 1, 1, rngs)

    def __call__(self, images):
        """images (B, H, W, 3) in [-1, 1] -> patch logits (B, h, w)."""
        h = jax.nn.leaky_relu(self.conv_in(images), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)[..., 0]
