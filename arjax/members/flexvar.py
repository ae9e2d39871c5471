"""FlexVAR: next-scale prediction without residuals, at any scale schedule (so any resolution)."""
from __future__ import annotations

import dataclasses

from arjax.members.base import Member, SamplerOptions, option
from arjax.ops import scales


@dataclasses.dataclass(frozen=True)
class FlexVAROptions(SamplerOptions):
    patch_nums: tuple[int, ...] | None = option(
        None, "FlexVAR: any scale schedule, e.g. 1,2,4,8,12; the image side is the last scale's side times the "
              "tokenizer's downsampling", ints=True)
    cfg_style: str = option("var", "FlexVAR: VAR's ramped guidance or LlamaGen's constant one",
                            choices=("var", "llamagen"))

    def check(self, model_cfg) -> None:
        if self.patch_nums is not None:
            scales.check_schedule(self.patch_nums)


def logits(tokenizer, model, labels, tokens, patch_nums=None):
    """Teacher forcing on `patch_nums`: scale k's input is scale k-1's codes resized to pn_k."""
    pns = tuple(patch_nums or model.cfg.patch_nums)
    return model(labels, tokenizer.quantize.indices_to_var_input(tokens, patch_nums=pns), patch_nums=pns)


MEMBER = Member(
    name="flexvar", module="arjax.nn.models.flexvar.FlexVAR", config="arjax.nn.models.flexvar.FlexVARConfig",
    tokenizer="flexvq", task="arjax.train.generator_tasks.FlexVARTask",
    sampler="arjax.sample.flexvar.sample_flexvar", logits="arjax.members.flexvar.logits",
    options="arjax.members.flexvar.FlexVAROptions", converter="arjax.convert.flexvar", any_schedule=True,
    tiny=(("depth", 2), ("embed_dim", 32), ("num_heads", 2)))
