"""What a member is: the parts one generator is made of, named by import path so that naming a member
costs nothing until a part is used; and the sampler-options dataclass every member's sampler takes."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import types


def resolve(path: str):
    """"package.module.name" -> the object."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class TokenizerKind:
    """A tokenizer architecture: module, config dataclass and the task that trains it."""
    name: str
    module: str
    config: str
    task: str                  # "pkg.mod.Class": trains it (`arjax train` with task = `task_name`)
    task_name: str             # the config's `task` value for training it
    any_schedule: bool = False  # encode / decode take a scale schedule at call time
    tiny: tuple = ()           # (config key, value) pairs of its small size (`file.py:stage:tiny`)

    @property
    def cls(self):
        return resolve(self.module)

    @property
    def config_cls(self):
        return resolve(self.config)


@dataclasses.dataclass(frozen=True)
class Member:
    """One generator of the framework: everything generic code needs, in one place."""
    name: str
    module: str                 # the transformer, "pkg.mod.Class"
    config: str                 # its config dataclass
    tokenizer: str              # key of arjax.members.TOKENIZERS
    task: str                   # training task class (arjax.train.generator_tasks.GeneratorTask protocol)
    sampler: str                # fn(tokenizer, model, labels, keys, *, cfg, top_k, top_p, forced_tokens,
                                #    forced_mask, **options) -> (images in [0, 1], tokens, ...)
    logits: str                 # fn(tokenizer, model, labels, tokens, patch_nums) -> teacher-forced logits
    options: str                # SamplerOptions subclass: the sampler's member-specific keywords
    converter: str = ""         # module with HELP, add_arguments(parser), run(args) -> model directory
    any_schedule: bool = False  # the model and tokenizer take a scale schedule at call time
    tiny: tuple = ()            # (model config key, value) pairs of its small size (`file.py:stage:tiny`)
    collaborative: str = ""     # fn(tokenizer, drafter, refiner, labels, keys, *, draft_scales, ...like sampler):
                                # two models of this member on one tokenizer (CoDe); "" = not supported

    @property
    def cls(self):
        return resolve(self.module)

    @property
    def config_cls(self):
        return resolve(self.config)

    @property
    def sample(self):
        return resolve(self.sampler)

    @property
    def teacher_logits(self):
        return resolve(self.logits)

    @property
    def options_cls(self) -> type[SamplerOptions]:
        return resolve(self.options)

    @property
    def task_cls(self):
        return resolve(self.task)


def option(default, help: str, **meta):  # noqa: A002 -- argparse's word
    """A sampler option field: its default, the CLI's help, and `choices` / `ints` (comma list) if any."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """A member's sampler keywords beyond cfg / top_k / top_p. Frozen and hashable: the options are
    static arguments of the compiled sampler. `parse` validates once; the CLI's flags come from the
    fields (`arjax.cli`), so a new option is one field here."""

    @classmethod
    def parse(cls, given: dict, model_cfg, member: str) -> SamplerOptions:
        known = [f.name for f in dataclasses.fields(cls)]
        if unknown := sorted(set(given) - set(known)):
            raise ValueError(f"sampling option(s) {unknown} do not apply to {member}; it takes {known or 'none'}")
        values = {}
        for f in dataclasses.fields(cls):
            v = given.get(f.name)
            if v is None:
                continue
            if f.metadata.get("ints"):
                v = tuple(int(x) for x in v)
            elif "choices" in f.metadata and v not in f.metadata["choices"]:
                raise ValueError(f"{f.name} must be one of {list(f.metadata['choices'])}; got {v!r}")
            elif f.type in ("bool", bool):
                v = bool(v)
            elif f.type in ("int", int):
                v = int(v)
            elif f.type in ("float", float):
                v = float(v)
            values[f.name] = v
        opts = cls(**values)
        opts.check(model_cfg)
        return opts

    def check(self, model_cfg) -> None:
        """Raise ValueError naming the option that does not fit the model."""

    @property
    def patch_nums(self) -> tuple[int, ...] | None:
        """The scale schedule sampled at, when a member lets it be chosen (None: the model's own)."""
        return None

    def kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def option_fields() -> dict[str, dataclasses.Field]:
    """Every registered member's option fields by name (the CLI offers their union as flags). Members may
    share a name (same meaning and type, e.g. `temperature`): the first member's field is the flag, with
    every member's help joined, so the help does not name one member only."""
    from arjax.members import MEMBERS, member
    out = {}
    for name in MEMBERS:
        for f in dataclasses.fields(member(name).options_cls):
            if f.name not in out:
                out[f.name] = f
            elif f.metadata["help"] not in out[f.name].metadata["help"]:
                shared = copy.copy(out[f.name])
                shared.metadata = types.MappingProxyType(
                    {**shared.metadata, "help": f"{shared.metadata['help']}; {f.metadata['help']}"})
                out[f.name] = shared
    return out

