"""The next-scale family: which tokenizer, transformer and sampler each member is made of.

Members differ in a few well-defined places (mask, next-scale input, quantizer, position encoding,
sampler); everything generic (the pipeline, the trainer's tasks, the CLI) looks a member up here by
the `family` name stored in a model directory's arjax.json or a config. Classes are imported lazily,
so naming a member costs nothing until it is used.
"""
from __future__ import annotations

import dataclasses
import importlib


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class _Parts:
    name: str
    module: str        # "package.module.Class"
    config: str        # its config dataclass

    @property
    def cls(self):
        return _resolve(self.module)

    @property
    def config_cls(self):
        return _resolve(self.config)


@dataclasses.dataclass(frozen=True)
class Tokenizer(_Parts):
    pass


@dataclasses.dataclass(frozen=True)
class Member(_Parts):
    tokenizer: str = "msvq"  # key of TOKENIZERS
    sampler: str = ""
    # sampler keywords beyond cfg / top_k / top_p, all static (they change the compiled loop)
    options: tuple[str, ...] = ()
    # the model and tokenizer take a scale schedule at call time (FlexVAR)
    any_schedule: bool = False

    @property
    def sample(self):
        return _resolve(self.sampler)

    @property
    def tok(self) -> Tokenizer:
        return TOKENIZERS[self.tokenizer]


TOKENIZERS = {
    "msvq": Tokenizer("msvq", "arjax.nn.tokenizers.msvq.MultiScaleVQVAE", "arjax.nn.tokenizers.msvq.VQVAEConfig"),
    "flexvq": Tokenizer("flexvq", "arjax.nn.tokenizers.flexvq.FlexVQVAE", "arjax.nn.tokenizers.flexvq.FlexVQConfig"),
}

MEMBERS = {
    "var": Member("var", "arjax.nn.models.var.VAR", "arjax.nn.models.var.VARConfig", tokenizer="msvq",
                  sampler="arjax.sample.next_scale.sample_next_scale", options=("more_smooth",)),
    "hmar": Member("hmar", "arjax.nn.models.hmar.HMAR", "arjax.nn.models.hmar.HMARConfig", tokenizer="msvq",
                   sampler="arjax.sample.hmar.sample_hmar", options=("steps",)),
    "flexvar": Member("flexvar", "arjax.nn.models.flexvar.FlexVAR", "arjax.nn.models.flexvar.FlexVARConfig",
                      tokenizer="flexvq", sampler="arjax.sample.flexvar.sample_flexvar",
                      options=("patch_nums", "cfg_style"), any_schedule=True),
}


def member(name: str) -> Member:
    if name not in MEMBERS:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(MEMBERS)}")
    return MEMBERS[name]


def tokenizer(name: str) -> Tokenizer:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer family {name!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]
