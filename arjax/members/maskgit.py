"""MaskGIT: masked token prediction with a bidirectional transformer, decoded by iterative parallel
unmasking (`arjax.sample.masked`), over the same one-scale VQ tokenizer as LlamaGen (flexvq, one scale).
No released checkpoint uses this tokenizer, so there is no converter."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from arjax.members.base import Member, SamplerOptions, option


@dataclasses.dataclass(frozen=True)
class MaskGITOptions(SamplerOptions):
    iterations: int = option(8, "MaskGIT: decoding steps (1..image tokens); each fixes a cosine-scheduled "
                                "share of the tokens")
    choice_temperature: float = option(4.5, "MaskGIT: scale of the Gumbel noise added to the confidences that "
                                            "choose which tokens to keep (annealed to 0 at the last step)")
    temperature: float = option(1.0, "MaskGIT: the same, for its token draws (confidences are scored under it)")

    def check(self, model_cfg) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1; got {self.iterations}")
        if model_cfg is not None and self.iterations > model_cfg.block_size:
            raise ValueError(f"iterations must be at most the {model_cfg.block_size} image tokens (each step "
                             f"fixes at least one); got {self.iterations}")
        if self.choice_temperature < 0:
            raise ValueError(f"choice_temperature must be >= 0; got {self.choice_temperature}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")


def logits(tokenizer, model, labels, tokens, patch_nums=None):
    """A masked model has no teacher forcing; its logits here are those of the first decoding step: every
    image token masked, conditioned on the labels alone (`tokens` fixes only the shape). Scoring each
    token with only itself masked would cost one model call per token."""
    return model(labels, jnp.full(tokens.shape, model.cfg.mask_id, jnp.int32))


MEMBER = Member(
    name="maskgit", module="arjax.nn.models.maskgit.MaskGIT", config="arjax.nn.models.maskgit.MaskGITConfig",
    tokenizer="flexvq", task="arjax.train.maskgit_task.MaskGITTask", sampler="arjax.sample.masked.sample_maskgit",
    logits="arjax.members.maskgit.logits", options="arjax.members.maskgit.MaskGITOptions", converter="",
    tiny=(("dim", 32), ("n_layer", 2), ("n_head", 2), ("multiple_of", 32)))
