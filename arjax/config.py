"""Loading ml_collections config files: `path/to/file.py:arg` plus `key.sub=value` overrides."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections


# The small size of every training config (`file.py:stage:tiny`): seconds per run on a CPU, for tests and
# smoke runs. The model's and tokenizer's sizes come from their member / tokenizer kind (`tiny`).
TINY_TRAINING = {"steps": 8, "batch_size": 4, "log_every": 1, "sample_every": 0, "checkpoint.every": 4,
                 "optim.warmup_steps": 2, "data.kwargs.num_examples": 64, "sample.preview_classes": 2,
                 "sample.preview_per_class": 1}


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`spec` is `file.py`, `file.py:arg` or `file.py:arg:tiny`; the file defines `get_config(arg)`, and
    `:tiny` shrinks the result (`tiny`). Each override is `dotted.key=value` (a Python literal, else a
    string), applied after; an unknown key is an error naming it."""
    path, _, arg = spec.partition(":")
    arg, small = (arg[:-len(":tiny")], True) if arg.endswith(":tiny") else (arg, False)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file} (run from the repository root, or give a path)")
    module_spec = importlib.util.spec_from_file_location(f"arjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{file} defines no get_config(arg)")
    cfg = module.get_config(arg) if arg else module.get_config()
    if small:
        tiny(cfg)
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def tiny(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a training config in place: `TINY_TRAINING` where the config has the key, the tokenizer to
    its kind's tiny size (a one-scale tokenizer stays one-scale) and the model to its member's."""
    from arjax import members
    for key, value in TINY_TRAINING.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and leaf in node:
            node[leaf] = min(node[leaf], value) if key == "steps" else value
    name = cfg.get("task") or ""  # the member a generator config trains, or the tokenizer task
    member = members.member(name) if name in members.MEMBERS else None
    kind = members.tokenizer_kind_of_task(name) or (members.tokenizer_kind(member.tokenizer) if member else None)
    # the tokenizer it trains or builds, or the layout a generator's recipe plans with (`plan.tokenizer`)
    for tok in (cfg.get("tokenizer"), (cfg.get("plan") or {}).get("tokenizer")):
        if kind is None or not isinstance(tok, ml_collections.ConfigDict):
            continue
        one_scale = len(tok.get("patch_nums", ())) == 1
        for key, value in kind.tiny:
            if key in tok:
                tok[key] = (value[-1],) if key == "patch_nums" and one_scale else value
    if member is not None and "model" in cfg:
        for key, value in member.tiny:
            if key in cfg.model:
                cfg.model[key] = value
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} must look like key=value")
    *parents, leaf = key.strip().lstrip("-").removeprefix("config.").split(".")
    node = cfg
    for i, p in enumerate(parents):
        if p not in node:
            raise KeyError(f"unknown config key {'.'.join(parents[:i + 1])!r} in override {item!r}")
        node = node[p]
    if leaf not in node:
        raise KeyError(f"unknown config key {key!r}; known at this level: {sorted(node.keys())}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, bool) and raw.strip().lower() in ("true", "false"):  # --set x=true as well as True
        value = raw.strip().lower() == "true"
    try:
        node[leaf] = value
    except TypeError as e:  # ml_collections keeps each field's type
        raise ValueError(f"override {item!r}: {key} is a {type(old).__name__}, got {value!r}") from e
