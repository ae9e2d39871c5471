"""Reading PyTorch state dicts and mapping them onto NNX parameter trees.

arjax modules mirror the PyTorch attribute names, so a flax path like `encoder.down.0.block.1.conv1.kernel`
corresponds to the torch key `encoder.down.0.block.1.conv1.weight` up to a few per-model renames.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_WRAPPER_KEYS = ("state_dict", "model", "module", "var_wo_ddp", "vae_wo_ddp")
_PREFIXES = ("module.", "_orig_mod.")


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    return t.detach().cpu().float().numpy() if t.dtype.is_floating_point else t.detach().cpu().numpy()


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Read a `.safetensors` (needs nothing else) or `.pth` (needs torch) file into numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable .safetensors file (truncated or corrupt?): {e}") from e
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"reading {path.name} needs PyTorch: `pip install torch` (the CPU build is enough), "
                f"or convert the file to .safetensors first") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError for bad files
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
        sd = obj
        while isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in _WRAPPER_KEYS:
            sd = next(iter(sd.values()))
        if not isinstance(sd, dict):
            raise ValueError(f"{path} does not hold a state dict (found {type(sd).__name__})")
        sd = {k: _to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")}
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = np.asarray(v)
    return out


def torch_name(flax_path: tuple, renames=()) -> str:
    """Flax path tuple -> torch key, after `renames` [(regex, replacement), ...] on the dotted path."""
    name = ".".join(str(p) for p in flax_path)
    for pattern, repl in renames:
        name = re.sub(pattern, repl, name)
    leaf = name.rsplit(".", 1)
    if len(leaf) == 2 and leaf[1] in ("kernel", "scale", "embedding"):
        name = leaf[0] + ".weight"
    return name


def torch_to_flax(flax_path: tuple, value: np.ndarray) -> np.ndarray:
    """Layout change for one tensor: conv (O,I,kh,kw) -> (kh,kw,I,O); linear (out,in) -> (in,out)."""
    if flax_path[-1] == "kernel":
        if value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if value.ndim == 2:
            return value.T
    return value


def fill_params(abstract: dict, sd: dict[str, np.ndarray], *, renames=(), ignore=(), what: str = "model"):
    """Build the pure-dict param tree for `abstract` (leaves with .shape/.dtype) from state dict `sd`.

    Every parameter must be found with the right shape, and every tensor in `sd` must be used, except
    keys matching one of the `ignore` regexes (known buffers). Errors name the tensor.
    """
    import jax

    used, problems = set(), []

    def fill(path, leaf):
        keys = tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path)
        name = torch_name(keys, renames)
        if name not in sd:
            problems.append(f"missing tensor {name!r} (expected shape {_torch_shape(keys, leaf.shape)})")
            return np.zeros(leaf.shape, leaf.dtype)
        used.add(name)
        value = torch_to_flax(keys, sd[name])
        if value.shape != tuple(leaf.shape):
            problems.append(f"tensor {name!r}: expected shape {_torch_shape(keys, leaf.shape)}, "
                            f"found {tuple(sd[name].shape)}")
            return np.zeros(leaf.shape, leaf.dtype)
        return value.astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, abstract)
    extra = [k for k in sd if k not in used and not any(re.fullmatch(p, k) for p in ignore)]
    problems += [f"unexpected tensor {k!r} with shape {tuple(sd[k].shape)}" for k in sorted(extra)]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"{what} state dict does not match the inferred architecture:\n  {shown}")
    return params


def _torch_shape(keys, shape) -> tuple:
    shape = tuple(shape)
    if keys[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if keys[-1] == "kernel" and len(shape) == 2:
        return shape[::-1]
    return shape
