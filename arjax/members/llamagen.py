"""LlamaGen: raster-order next-token prediction (Llama-style GPT) over a VQ-16 tokenizer.

The tokenizer is the flexvq kind with one scale (the latent grid itself): LlamaGen's VQ-16 is
exactly FlexVAR's tokenizer quantised at a single scale."""
from __future__ import annotations

import dataclasses

from arjax.members.base import Member, SamplerOptions, option


@dataclasses.dataclass(frozen=True)
class LlamaGenOptions(SamplerOptions):
    cfg_interval: int = option(-1, "LlamaGen: guide tokens 0..cfg_interval+1 only (-1: all)")
    temperature: float = option(1.0, "LlamaGen: softmax temperature of every draw")

    def check(self, model_cfg) -> None:
        if self.cfg_interval < -1:
            raise ValueError(f"cfg_interval must be -1 (guide every token) or >= 0; got {self.cfg_interval}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")


def logits(tokenizer, model, labels, tokens, patch_nums=None):
    """Teacher forcing: position t sees the class token and tokens < t."""
    return model(labels, tokens)


MEMBER = Member(
    name="llamagen", module="arjax.nn.models.llamagen.LlamaGen", config="arjax.nn.models.llamagen.LlamaGenConfig",
    tokenizer="flexvq", task="arjax.train.generator_tasks.LlamaGenTask", sampler="arjax.sample.raster.sample_raster",
    logits="arjax.members.llamagen.logits", options="arjax.members.llamagen.LlamaGenOptions",
    converter="arjax.convert.llamagen",
    tiny=(("dim", 32), ("n_layer", 2), ("n_head", 2), ("multiple_of", 32)))
