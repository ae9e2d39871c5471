"""VAR: next-scale prediction over a multi-scale residual VQVAE ("Visual Autoregressive Modeling")."""
from __future__ import annotations

import dataclasses

from arjax.members.base import Member, SamplerOptions, option


@dataclasses.dataclass(frozen=True)
class VAROptions(SamplerOptions):
    more_smooth: bool = option(False, "VAR: Gumbel-softmax mixtures of codes instead of hard tokens (visual "
                                      "option of the reference; not for FID)")


def logits(tokenizer, model, labels, tokens, patch_nums=None):
    """Teacher forcing: every scale's input is the tokenizer's upsampled residual sum of the coarser ones."""
    return model(labels, tokenizer.quantize.indices_to_var_input(tokens))


MEMBER = Member(
    name="var", module="arjax.nn.models.var.VAR", config="arjax.nn.models.var.VARConfig", tokenizer="msvq",
    task="arjax.train.generator_tasks.VARTask", sampler="arjax.sample.next_scale.sample_next_scale",
    logits="arjax.members.var.logits", options="arjax.members.var.VAROptions", converter="arjax.convert.var",
    tiny=(("depth", 2), ("embed_dim", 32), ("num_heads", 2)),
    collaborative="arjax.sample.collaborative.sample_collaborative")
