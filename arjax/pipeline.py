"""The public inference API: `pipe = arjax.load(DIR)`, then encode / decode / logits / sample.

Modules are split once into (graphdef, state); every entry point is a jitted pure function of the
state, and inputs are checked on the host first so that bad input fails with a message, not an XLA
traceback.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.nn.init import abstract_module, create
from arjax.nn.models.var import VAR, VARConfig
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
from arjax.sample.next_scale import sample_next_scale
from arjax.train import checkpoint

FAMILIES = {"var": (MultiScaleVQVAE, VQVAEConfig, VAR, VARConfig)}


def _check_images(images, size: int) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, 3); got rank {x.ndim} shape {x.shape}")
    if x.shape[-1] != 3:
        hint = " (this looks like NCHW: transpose to NHWC)" if x.shape[1] == 3 else ""
        raise ValueError(f"images must have 3 channels last, shape (B, H, W, 3); got {x.shape}{hint}")
    if x.shape[1:3] != (size, size):
        raise ValueError(f"this tokenizer takes {size}x{size} images; got {x.shape[1]}x{x.shape[2]}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be float in [-1, 1]; got dtype {x.dtype} (use x / 127.5 - 1 for uint8)")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"images contain {bad} non-finite values (NaN/inf)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"images must lie in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]")
    return x.astype(np.float32)


def _check_tokens(idx, seq_len: int, vocab: int) -> np.ndarray:
    t = np.asarray(idx)
    if t.ndim != 2 or t.shape[1] != seq_len:
        raise ValueError(f"token indices must have shape (B, {seq_len}); got {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"token indices must be integers; got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= vocab):
        raise ValueError(f"token indices must lie in [0, {vocab - 1}]; got [{t.min()}, {t.max()}]")
    return t.astype(np.int32)


def _check_labels(labels, num_classes: int) -> np.ndarray:
    y = np.atleast_1d(np.asarray(labels))
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D sequence of integer class ids; got {y.dtype} shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}] ({num_classes} = unconditional); "
                         f"got [{y.min()}, {y.max()}]")
    return y.astype(np.int32)


class Tokenizer:
    """images (B, H, W, 3) in [-1, 1] <-> tokens (B, L) int32, scales concatenated coarse to fine."""

    def __init__(self, module: MultiScaleVQVAE, precision: str = "highest"):
        self.cfg = module.cfg
        self.graphdef, self.state = nnx.split(module)
        self.precision = precision
        gd = self.graphdef
        self._encode = jax.jit(lambda st, x: nnx.merge(gd, st).encode(x))
        self._decode = jax.jit(lambda st, t: nnx.merge(gd, st).decode(t))
        self._var_input = jax.jit(lambda st, t: nnx.merge(gd, st).quantize.indices_to_var_input(t))

    @property
    def module(self) -> MultiScaleVQVAE:
        return nnx.merge(self.graphdef, self.state)

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.cfg.patch_nums)

    def encode(self, images) -> jax.Array:
        x = _check_images(images, self.cfg.image_size)
        with jax.default_matmul_precision(self.precision):
            return self._encode(self.state, x)

    def decode(self, idx) -> jax.Array:
        t = _check_tokens(idx, self.seq_len, self.cfg.vocab_size)
        with jax.default_matmul_precision(self.precision):
            return self._decode(self.state, t)

    def var_input(self, idx) -> jax.Array:
        """Teacher-forcing input (B, L - pn_0**2, Cvae) of a token sequence."""
        t = _check_tokens(idx, self.seq_len, self.cfg.vocab_size)
        with jax.default_matmul_precision(self.precision):
            return self._var_input(self.state, t)


class Pipeline:
    """A tokenizer and a next-scale transformer, loaded from one model directory."""

    def __init__(self, tokenizer: MultiScaleVQVAE, model: VAR, meta: dict | None = None,
                 precision: str = "highest"):
        self.tokenizer = Tokenizer(tokenizer, precision)
        self.cfg: VARConfig = model.cfg
        self.meta = meta or {}
        self.precision = precision
        self.graphdef, self.state = nnx.split(model)
        gd, tgd = self.graphdef, self.tokenizer.graphdef
        self._logits = jax.jit(lambda st, y, x: nnx.merge(gd, st)(y, x))

        def sample(tst, st, labels, keys, cfg, *, top_k, top_p, more_smooth):
            return sample_next_scale(nnx.merge(tgd, tst), nnx.merge(gd, st), labels, keys,
                                     cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)

        self._sample = jax.jit(sample, static_argnames=("top_k", "top_p", "more_smooth"))

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    def _spread(self, labels, keys):
        """With several local devices, split the batch over all of them (parameters replicated once).
        The batch is padded to a multiple of the device count; each sample still draws only from its key."""
        devices = jax.local_devices()
        if len(devices) == 1:
            return labels, keys, self.tokenizer.state, self.state
        if getattr(self, "_spread_mesh", None) is None:
            self._spread_mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
            rep = jax.sharding.NamedSharding(self._spread_mesh, jax.sharding.PartitionSpec())
            self._replicated = jax.device_put((self.tokenizer.state, self.state), rep)
        pad = -len(labels) % len(devices)
        labels = jnp.concatenate([labels, jnp.repeat(labels[-1:], pad)])
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad)])
        split = jax.sharding.NamedSharding(self._spread_mesh, jax.sharding.PartitionSpec("batch"))
        return (jax.device_put(labels, split), jax.device_put(keys, split), *self._replicated)

    def logits(self, idx, labels) -> jax.Array:
        """Teacher-forced logits (B, L, V) float32 for tokens (B, L) and labels (B,)."""
        y = _check_labels(labels, self.cfg.num_classes)
        x = self.tokenizer.var_input(idx)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"got {y.shape[0]} labels for {x.shape[0]} token sequences")
        with jax.default_matmul_precision(self.precision):
            return self._logits(self.state, y, x)

    def sample(self, labels, *, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed: int = 0,
               more_smooth: bool = False, return_tokens: bool = False, batch_size: int | None = None,
               first_index: int = 0):
        """Class-conditional samples (B, H, W, 3) float32 in [0, 1] (and tokens (B, L) with return_tokens).

        Sample i draws from `fold_in(key(seed), first_index + i)`, so results depend neither on
        `batch_size` nor on how a large request is split across calls (pass each call's offset).
        """
        y = _check_labels(labels, self.cfg.num_classes)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k filter); got {top_k}")
        top_k = min(top_k, self.cfg.vocab_size)  # the FID default 900 also serves small vocabularies
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1]; got {top_p}")
        base = jax.random.key(seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(first_index + jnp.arange(len(y)))
        bs = batch_size or max(len(y), 1)
        images, tokens = [], []
        for s in range(0, len(y), bs):
            n = len(y[s:s + bs])
            yb, kb, tst, st = self._spread(y[s:s + bs], keys[s:s + bs])
            with jax.default_matmul_precision(self.precision):
                img, tok, _ = self._sample(tst, st, yb, kb, jnp.float32(cfg), top_k=int(top_k), top_p=float(top_p),
                                           more_smooth=bool(more_smooth))
            images.append(img[:n])
            tokens.append(tok[:n])
        images, tokens = jnp.concatenate(images), jnp.concatenate(tokens)
        return (images, tokens) if return_tokens else images


def build(meta: dict, seed: int = 0, precision: str = "highest") -> Pipeline:
    """A freshly initialised pipeline from a model description (the `arjax.json` contents)."""
    tok_cls, tok_cfg_cls, model_cls, model_cfg_cls = _family(meta)
    return Pipeline(create(tok_cls, tok_cfg_cls(**meta["tokenizer"]), seed),
                    create(model_cls, model_cfg_cls(**meta["model"]), seed + 1), meta, precision)


def load_tokenizer(directory, precision: str = "highest") -> Tokenizer:
    """Load only the tokenizer of a model directory (a trained tokenizer's or a full model's)."""
    meta = checkpoint.read_meta(directory)
    cfg = VQVAEConfig(**meta["tokenizer"])
    tok = abstract_module(MultiScaleVQVAE, cfg)
    _restore(directory, {"tokenizer": tok})
    return Tokenizer(tok, precision)


def load(directory, precision: str = "highest") -> Pipeline:
    """Load a converted or trained model directory."""
    meta = checkpoint.read_meta(directory)
    if not (Path(directory) / checkpoint.PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{Path(directory) / checkpoint.PARAMS_DIR} is missing: the model directory is incomplete")
    if meta.get("family") == "msvq":
        raise ValueError(f"{directory} holds a tokenizer only; use arjax.load_tokenizer, or train a "
                         f"generator on it (configs/quickstart.py:var)")
    tok_cls, tok_cfg_cls, model_cls, model_cfg_cls = _family(meta)
    tok_cfg, model_cfg = tok_cfg_cls(**meta["tokenizer"]), model_cfg_cls(**meta["model"])
    tok, model = abstract_module(tok_cls, tok_cfg), abstract_module(model_cls, model_cfg)
    _restore(directory, {"tokenizer": tok, "model": model})
    return Pipeline(tok, model, meta, precision)


def save(pipe: Pipeline, directory, **extra_meta) -> Path:
    """Write a pipeline's parameters and description as a model directory."""
    meta = {"family": "var", "tokenizer": dataclasses.asdict(pipe.tokenizer.cfg),
            "model": dataclasses.asdict(pipe.cfg), **pipe.meta, **extra_meta}
    params = {"tokenizer": nnx.to_pure_dict(nnx.state(pipe.tokenizer.module, nnx.Param)),
              "model": nnx.to_pure_dict(nnx.state(nnx.merge(pipe.graphdef, pipe.state), nnx.Param))}
    return checkpoint.save_model(directory, meta, params)


def _restore(directory, modules: dict) -> None:
    """Fill abstract modules in place with the parameters stored under the same keys."""
    abstract = {k: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for k, m in modules.items()}
    params = checkpoint.load_params(directory, abstract)
    for k, m in modules.items():
        state = nnx.state(m, nnx.Param)
        nnx.replace_by_pure_dict(state, params[k])
        nnx.update(m, state)


def _family(meta: dict):
    fam = meta.get("family")
    if fam not in FAMILIES:
        raise ValueError(f"unknown model family {fam!r} in arjax.json; known: {sorted(FAMILIES)}")
    return FAMILIES[fam]
