"""The registry: every generator member and tokenizer kind of arjax, by name.

A member (`base.Member`) owns its model and config, tokenizer kind, training task, sampler and its
options, teacher-forced logits, converter and `any_schedule`; a model directory's `arjax.json` names
it under the key "family" (the stored name; a tokenizer-only directory names its tokenizer kind there).
Generic code (pipeline, CLI, trainer, plan, eval) looks parts up here and never names a member: a new
member is a module defining `MEMBER` plus one line below.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

from arjax.members.base import Member, TokenizerKind, resolve

MEMBERS = {  # name -> module defining MEMBER
    "var": "arjax.members.var",
    "hmar": "arjax.members.hmar",
    "flexvar": "arjax.members.flexvar",
    "llamagen": "arjax.members.llamagen",
    "maskgit": "arjax.members.maskgit",
}

_TINY_VQ = (("ch", 32), ("ch_mult", (1, 2, 2)), ("num_res_blocks", 1), ("z_channels", 8), ("vocab_size", 64), ("patch_nums", (1, 2, 3, 4)),
            ("using_mid_sa", False))
TOKENIZERS = {
    "msvq": TokenizerKind("msvq", "arjax.nn.tokenizers.msvq.MultiScaleVQVAE", "arjax.nn.tokenizers.msvq.VQVAEConfig",
                          task="arjax.train.tasks.TokenizerTask", task_name="tokenizer", tiny=_TINY_VQ),
    "flexvq": TokenizerKind("flexvq", "arjax.nn.tokenizers.flexvq.FlexVQVAE", "arjax.nn.tokenizers.flexvq.FlexVQConfig",
                            task="arjax.train.tasks.FlexTokenizerTask", task_name="flex_tokenizer", any_schedule=True,
                            tiny=(*_TINY_VQ, ("enc_channels", 8))),
}

META_KEY = "family"  # arjax.json's key naming the member (or, for a tokenizer alone, the tokenizer kind)


@functools.cache
def member(name: str) -> Member:
    if name not in MEMBERS:
        raise ValueError(f"unknown member {name!r}; known: {sorted(MEMBERS)}")
    return importlib.import_module(MEMBERS[name]).MEMBER


def tokenizer_kind(name: str) -> TokenizerKind:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {name!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]


def tokenizer_of(meta: dict) -> TokenizerKind:
    """The tokenizer kind of a model directory's metadata (a tokenizer's or a whole model's)."""
    name = meta.get(META_KEY)
    return TOKENIZERS[name] if name in TOKENIZERS else tokenizer_kind(member_of(meta).tokenizer)


def member_of(meta: dict) -> Member:
    try:
        return member(meta.get(META_KEY))
    except ValueError as e:
        raise ValueError(f"arjax.json: {META_KEY!r}: {e}") from None


def tokenizer_kind_of_task(task: str) -> TokenizerKind | None:
    """The tokenizer kind a config's `task` trains, if it trains a tokenizer."""
    return next((k for k in TOKENIZERS.values() if k.task_name == task), None)


def task_class(task: str):
    """The training task a config's `task` names: a member's name or a tokenizer kind's task_name."""
    if kind := tokenizer_kind_of_task(task):
        return resolve(kind.task)
    if task in MEMBERS:
        return member(task).task_cls
    known = sorted([*MEMBERS, *(k.task_name for k in TOKENIZERS.values())])
    raise ValueError(f"config key task={task!r} is not a known task; known: {known}")


def model_meta(kind: str, tokenizer_cfg, model_cfg=None, **extra) -> dict:
    """The one writer of `arjax.json`'s description: the member (or tokenizer kind) and its configs."""
    meta = {META_KEY: kind, "tokenizer": _as_dict(tokenizer_cfg)}
    if model_cfg is not None:
        meta["model"] = _as_dict(model_cfg)
    return {**meta, **extra}


def _as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
