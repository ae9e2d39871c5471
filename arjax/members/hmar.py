"""HMAR: Markovian next-scale prediction plus masked steps within a scale, on VAR's tokenizer."""
from __future__ import annotations

import dataclasses

from arjax.members.base import Member, SamplerOptions, option


@dataclasses.dataclass(frozen=True)
class HMAROptions(SamplerOptions):
    steps: tuple[int, ...] | None = option(None, "HMAR: masked steps per scale, e.g. 1,1,1,2,2,4 (default one "
                                                 "per scale)", ints=True)

    def check(self, model_cfg) -> None:
        if self.steps is None:
            return
        pns = model_cfg.patch_nums
        if len(self.steps) != len(pns) or any(s < 1 or s > pn * pn for s, pn in zip(self.steps, pns)):
            raise ValueError(f"steps must give 1..pn^2 masked steps for each of the {len(pns)} scales {tuple(pns)}; "
                             f"got {self.steps}")


MEMBER = Member(
    name="hmar", module="arjax.nn.models.hmar.HMAR", config="arjax.nn.models.hmar.HMARConfig", tokenizer="msvq",
    task="arjax.train.generator_tasks.HMARTask", sampler="arjax.sample.hmar.sample_hmar",
    logits="arjax.members.var.logits", options="arjax.members.hmar.HMAROptions",
    tiny=(("depth", 2), ("embed_dim", 32), ("num_heads", 2)))
