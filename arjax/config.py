"""Loading ml_collections config files: `path/to/file.py:arg` plus `key.sub=value` overrides."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`spec` is `file.py` or `file.py:arg`; the file defines `get_config(arg)`. Each override is
    `dotted.key=value` (a Python literal, else a string); an unknown key is an error naming it."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file} (run from the repository root, or give a path)")
    module_spec = importlib.util.spec_from_file_location(f"arjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{file} defines no get_config(arg)")
    cfg = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        apply_override(cfg, item)
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
