"""The public inference API: `pipe = arjax.load(DIR)`, then encode / decode / logits / sample.

Modules are split once into (graphdef, state); every entry point is a jitted pure function of the
state, and inputs are checked on the host first so that bad input fails with a message, not an XLA
traceback.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax import members
from arjax.nn.init import abstract_module, create
from arjax.ops import scales
from arjax.ops.scales import check_schedule
from arjax.sample import edit as editing
from arjax.train import checkpoint
from arjax.xla_cpu import inference_jit


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


def _local_mesh():
    return jax.sharding.Mesh(np.asarray(jax.local_devices()), ("batch",))


def _check_refiner(drafter: "Pipeline", refiner: "Pipeline") -> None:
    """Collaborative decoding needs two models of one member that read and write the same tokens."""
    if refiner.member.name != drafter.member.name:
        raise ValueError(f"the refiner is a {refiner.member.name} model and the drafter a {drafter.member.name} one: "
                         f"collaborative decoding takes two models of one member")
    for key in ("vocab_size", "cvae", "patch_nums", "num_classes"):
        a, b = getattr(drafter.cfg, key), getattr(refiner.cfg, key)
        if a != b:
            raise ValueError(f"drafter and refiner differ in model.{key} ({a} vs {b}): they must share a tokenizer "
                             f"and classes")
    same = jax.tree.structure(drafter.tokenizer.state) == jax.tree.structure(refiner.tokenizer.state) and all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(drafter.tokenizer.state),
                                             jax.tree.leaves(refiner.tokenizer.state)))
    if not same:
        raise ValueError("drafter and refiner have different tokenizers (config or weights): collaborative "
                         "decoding needs two models trained on the same tokenizer")


class Tokenizer:
    """images (B, H, W, 3) in [-1, 1] <-> tokens (B, L) int32, scales concatenated coarse to fine.

    A FlexVAR tokenizer (`any_schedule`) takes the scale schedule at call time (`patch_nums=`); the
    others have one fixed schedule, their config's."""

    def __init__(self, module, precision: str = "highest", any_schedule: bool = False):
        self.cfg = module.cfg
        self.graphdef, self.state = nnx.split(module)
        self.precision = precision
        self.any_schedule = any_schedule
        gd = self.graphdef
        kw = (lambda pns: {"patch_nums": pns}) if any_schedule else (lambda pns: {})
        self._encode = inference_jit(lambda st, x, pns: nnx.merge(gd, st).encode(x, **kw(pns)), static_argnums=2)
        self._decode = inference_jit(lambda st, t, pns: nnx.merge(gd, st).decode(t, **kw(pns)), static_argnums=2)
        self._var_input = jax.jit(lambda st, t, pns: nnx.merge(gd, st).quantize.indices_to_var_input(t, **kw(pns)),
                                  static_argnums=2)

    @property
    def module(self):
        return nnx.merge(self.graphdef, self.state)

    def schedule(self, patch_nums=None) -> tuple[int, ...]:
        """The scale schedule a call uses: the config's, or (FlexVAR only) the one asked for."""
        if patch_nums is None or tuple(patch_nums) == tuple(self.cfg.patch_nums):
            return tuple(self.cfg.patch_nums)
        if not self.any_schedule:
            raise ValueError(f"this tokenizer has the fixed schedule {tuple(self.cfg.patch_nums)}; only FlexVAR's "
                             f"takes patch_nums at call time")
        return check_schedule(patch_nums)

    def seq_len(self, patch_nums=None) -> int:
        return scales.seq_len(self.schedule(patch_nums))

    def encode(self, images, patch_nums=None) -> jax.Array:
        pns = self.schedule(patch_nums)
        x = _check_images(images, self.cfg.image_size)
        with jax.default_matmul_precision(self.precision):
            return self._encode(self.state, x, pns)

    def decode(self, idx, patch_nums=None) -> jax.Array:
        pns = self.schedule(patch_nums)
        t = _check_tokens(idx, self.seq_len(pns), self.cfg.vocab_size)
        with jax.default_matmul_precision(self.precision):
            return self._decode(self.state, t, pns)

    def var_input(self, idx, patch_nums=None) -> jax.Array:
        """Next-scale teacher-forcing input (B, L - pn_0**2, Cvae) of a token sequence (next-scale members
        only: a one-scale tokenizer's raster has no next scale to feed)."""
        pns = self.schedule(patch_nums)
        if len(pns) < 2:
            raise ValueError(f"var_input is the next-scale members' teacher-forcing input; this tokenizer has the "
                             f"one scale {pns} (a raster or masked member's): there is no next scale to feed")
        t = _check_tokens(idx, self.seq_len(pns), self.cfg.vocab_size)
        with jax.default_matmul_precision(self.precision):
            return self._var_input(self.state, t, pns)


class Pipeline:
    """A tokenizer and a generator of one member (`arjax.members`), loaded from one model directory;
    `meta` is its arjax.json description, which names the member."""

    def __init__(self, tokenizer, model, meta: dict, precision: str = "highest"):
        self.meta = meta
        self.member = members.member_of(meta)
        self.tokenizer = Tokenizer(tokenizer, precision, any_schedule=self.member.any_schedule)
        self.cfg = model.cfg
        self.precision = precision
        self.graphdef, self.state = nnx.split(model)
        gd, tgd, member = self.graphdef, self.tokenizer.graphdef, self.member
        self._logits = jax.jit(lambda tst, st, y, t, pns: member.teacher_logits(
            nnx.merge(tgd, tst), nnx.merge(gd, st), y, t, pns), static_argnums=4)

        def sample(tst, st, labels, keys, cfg, forced_tokens, forced_mask, *, top_k, top_p, options):
            out = member.sample(nnx.merge(tgd, tst), nnx.merge(gd, st), labels, keys, cfg=cfg, top_k=top_k,
                                top_p=top_p, forced_tokens=forced_tokens, forced_mask=forced_mask, **options.kwargs())
            return out[0], out[1]

        self._sample = inference_jit(sample, static_argnames=("top_k", "top_p", "options"))

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    def _spread(self, *batch):
        """With several local devices, split the batch arrays over all of them (parameters replicated
        once). The batch is padded to a multiple of the device count; each sample still draws only from
        its key."""
        devices = jax.local_devices()
        if len(devices) == 1:
            return (*batch, self.tokenizer.state, self.state)
        split = jax.sharding.NamedSharding(_local_mesh(), jax.sharding.PartitionSpec("batch"))
        pad = -len(batch[0]) % len(devices)
        batch = [None if a is None else jax.device_put(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), split)
                 for a in batch]
        return (*batch, *self._replicated())

    def _replicated(self):
        """(tokenizer state, model state), replicated once over the local devices when there are several."""
        if len(jax.local_devices()) == 1:
            return self.tokenizer.state, self.state
        if getattr(self, "_replicas", None) is None:
            rep = jax.sharding.NamedSharding(_local_mesh(), jax.sharding.PartitionSpec())
            self._replicas = jax.device_put((self.tokenizer.state, self.state), rep)
        return self._replicas

    def _sampler_options(self, options: dict):
        """The member's options dataclass, validated once (a wrong one names itself)."""
        return self.member.options_cls.parse(options, self.cfg, self.member.name)

    def schedule(self, patch_nums=None) -> tuple[int, ...]:
        return self.tokenizer.schedule(patch_nums)

    def logits(self, idx, labels, patch_nums=None) -> jax.Array:
        """Teacher-forced logits (B, L, V) float32 for tokens (B, L) and labels (B,)."""
        y = _check_labels(labels, self.cfg.num_classes)
        pns = self.schedule(patch_nums)
        t = _check_tokens(idx, self.tokenizer.seq_len(pns), self.cfg.vocab_size)
        if y.shape[0] != t.shape[0]:
            raise ValueError(f"got {y.shape[0]} labels for {t.shape[0]} token sequences")
        with jax.default_matmul_precision(self.precision):
            return self._logits(self.tokenizer.state, self.state, y, t, pns)

    def sample(self, labels, *, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed: int = 0,
               return_tokens: bool = False, batch_size: int | None = None, first_index: int = 0,
               refiner: "Pipeline | None" = None, draft_scales: int | None = None, **options):
        """Class-conditional samples (B, H, W, 3) float32 in [0, 1] (and tokens (B, L) with return_tokens).

        Sample i draws from `fold_in(key(seed), first_index + i)`, so results depend neither on
        `batch_size` nor on how a large request is split across calls (pass each call's offset).
        `options`: the member's sampler options (`pipe.member.options_cls`, e.g. VAR's `more_smooth`,
        HMAR's `steps`, FlexVAR's `patch_nums` and `cfg_style`, LlamaGen's `cfg_interval` and `temperature`).
        `refiner` + `draft_scales`: collaborative decoding (CoDe): this model samples the first
        `draft_scales` scales, `refiner` (a pipeline of the same member on the same tokenizer, usually
        smaller) the rest.
        """
        return self._generate(labels, None, None, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                              return_tokens=return_tokens, batch_size=batch_size, first_index=first_index,
                              refiner=refiner, draft_scales=draft_scales, **options)

    def edit(self, images, mask, *, label, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed: int = 0,
             return_tokens: bool = False, batch_size: int | None = None, **options):
        """Zero-shot inpainting / outpainting / class-conditional editing.

        images (B, H, W, 3) in [-1, 1]; mask (H, W) or (B, H, W), True where the image is regenerated.
        The known tokens are teacher-forced at every scale, by the official VAR demo's rule
        (`arjax.sample.edit.known_tokens`: the finest tokens holding no masked pixel are kept, each
        scale takes that keep grid bilinearly resized and > 0.5, the 1 x 1 scale always); the rest is
        sampled conditioned on `label` (one class, or one per image). Returns the edited images in
        [0, 1] (and their tokens with return_tokens).
        """
        x = _check_images(images, self.tokenizer.cfg.image_size)
        opts = self._sampler_options(options)
        pns = self.schedule(opts.patch_nums)
        known = editing.known_tokens(editing.check_mask(mask, x.shape[:3]), pns)
        labels = _check_labels(label, self.cfg.num_classes)
        if len(labels) not in (1, len(x)):
            raise ValueError(f"give one label, or one per image ({len(x)}); got {len(labels)}")
        labels = np.broadcast_to(labels, (len(x),))
        tokens = np.asarray(self.tokenizer.encode(x, opts.patch_nums))
        return self.complete(tokens, known, labels, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                             return_tokens=return_tokens, batch_size=batch_size, **options)

    def complete(self, tokens, known, labels, *, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96,
                 seed: int = 0, return_tokens: bool = False, batch_size: int | None = None,
                 refiner: "Pipeline | None" = None, draft_scales: int | None = None, **options):
        """Sample the unknown tokens of token sequences (B, L): where `known` (B, L) is True the token is
        kept (teacher-forced, and the next scales are conditioned on it), elsewhere it is sampled
        conditioned on `labels` (B,), as `sample` would. Returns images in [0, 1] (and the tokens)."""
        seq_len = self.tokenizer.seq_len(self._sampler_options(options).patch_nums)
        t = _check_tokens(tokens, seq_len, self.cfg.vocab_size)
        known = np.asarray(known)
        if known.shape != t.shape or known.dtype != bool:
            raise ValueError(f"known must be a boolean array shaped like the tokens {t.shape}; got "
                             f"{known.dtype} {known.shape}")
        y = _check_labels(labels, self.cfg.num_classes)
        if len(y) != len(t):
            raise ValueError(f"give one label per token sequence ({len(t)})")
        return self._generate(y, t, known, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                              return_tokens=return_tokens, batch_size=batch_size, first_index=0, refiner=refiner,
                              draft_scales=draft_scales, **options)

    def _collaborative(self, refiner: "Pipeline", draft_scales):
        """The jitted two-model sampler (this pipeline drafts, `refiner` refines), with the same call signature
        as `_sample`; checked once per refiner: same member, same tokenizer weights, same token layout."""
        if not isinstance(refiner, Pipeline):
            raise TypeError(f"refiner must be an arjax.Pipeline (arjax.load(DIR)); got {type(refiner).__name__}")
        if not self.member.collaborative:
            supported = [n for n in members.MEMBERS if members.member(n).collaborative]
            raise ValueError(f"collaborative decoding (refiner=) is implemented for {supported}, not for "
                             f"{self.member.name}")
        if not isinstance(draft_scales, int) or not 0 <= draft_scales <= len(self.cfg.patch_nums):
            raise ValueError(f"draft_scales (the scales the drafter samples before the refiner takes over) must "
                             f"be an int in [0, {len(self.cfg.patch_nums)}]; got {draft_scales!r}")
        cache = self.__dict__.setdefault("_collab_fns", {})
        if id(refiner) not in cache:
            _check_refiner(self, refiner)
            tgd, gd, rgd = self.tokenizer.graphdef, self.graphdef, refiner.graphdef
            fn = members.resolve(self.member.collaborative)

            def sample(tst, st, rst, labels, keys, cfg, forced_tokens, forced_mask, *, draft, top_k, top_p, options):
                out = fn(nnx.merge(tgd, tst), nnx.merge(gd, st), nnx.merge(rgd, rst), labels, keys, draft_scales=draft,
                         cfg=cfg, top_k=top_k, top_p=top_p, forced_tokens=forced_tokens, forced_mask=forced_mask,
                         **options.kwargs())
                return out[0], out[1]

            # the refiner is kept with its function so that its id is not reused while cached
            cache[id(refiner)] = (refiner, inference_jit(sample, static_argnames=("draft", "top_k", "top_p", "options")))
        _, jitted = cache[id(refiner)]
        rst = refiner._replicated()[1]
        return lambda tst, st, *rest, **kw: jitted(tst, st, rst, *rest, draft=draft_scales, **kw)

    def _generate(self, labels, forced_tokens, forced_mask, *, cfg, top_k, top_p, seed, return_tokens, batch_size,
                  first_index, refiner=None, draft_scales=None, **options):
        y = _check_labels(labels, self.cfg.num_classes)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k filter); got {top_k}")
        top_k = min(top_k, self.cfg.vocab_size)  # the FID default 900 also serves small vocabularies
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1]; got {top_p}")
        opts = self._sampler_options(options)
        if refiner is None and draft_scales is not None:
            raise ValueError("draft_scales is collaborative decoding's hand-over scale: give the refiner too")
        sample = self._sample if refiner is None else self._collaborative(refiner, draft_scales)
        base = jax.random.key(seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(first_index + jnp.arange(len(y)))
        bs = batch_size or max(len(y), 1)
        images, tokens = [], []
        for s in range(0, len(y), bs):
            n = len(y[s:s + bs])
            part = lambda a: None if a is None else jnp.asarray(a[s:s + bs])  # noqa: E731
            yb, kb, ft, fm, tst, st = self._spread(jnp.asarray(y[s:s + bs]), keys[s:s + bs], part(forced_tokens),
                                                   part(forced_mask))
            with jax.default_matmul_precision(self.precision):
                img, tok = sample(tst, st, yb, kb, jnp.float32(cfg), ft, fm, top_k=int(top_k), top_p=float(top_p),
                                  options=opts)
            images.append(img[:n])
            tokens.append(tok[:n])
        images, tokens = jnp.concatenate(images), jnp.concatenate(tokens)
        return (images, tokens) if return_tokens else images


def build(meta: dict, seed: int = 0, precision: str = "highest") -> Pipeline:
    """A freshly initialised pipeline from a model description (the `arjax.json` contents)."""
    member, tok = members.member_of(meta), members.tokenizer_of(meta)
    return Pipeline(create(tok.cls, tok.config_cls(**meta["tokenizer"]), seed),
                    create(member.cls, member.config_cls(**meta["model"]), seed + 1), meta, precision)


def load_tokenizer(directory, precision: str = "highest") -> Tokenizer:
    """Load only the tokenizer of a model directory (a trained tokenizer's or a full model's)."""
    meta = checkpoint.read_meta(directory)
    kind = members.tokenizer_of(meta)
    tok = abstract_module(kind.cls, kind.config_cls(**meta["tokenizer"]))
    _restore(directory, {"tokenizer": tok}, partial=True)  # a full model's directory holds "model" too
    return Tokenizer(tok, precision, any_schedule=kind.any_schedule)


def load(directory, precision: str = "highest") -> Pipeline:
    """Load a converted or trained model directory."""
    meta = checkpoint.read_meta(directory)
    if not (Path(directory) / checkpoint.PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{Path(directory) / checkpoint.PARAMS_DIR} is missing: the model directory is incomplete")
    if "model" not in meta:
        raise ValueError(f"{directory} holds a tokenizer only; use arjax.load_tokenizer, or train a "
                         f"generator on it (e.g. configs/quickstart.py:var)")
    member, kind = members.member_of(meta), members.tokenizer_of(meta)
    tok = abstract_module(kind.cls, kind.config_cls(**meta["tokenizer"]))
    model = abstract_module(member.cls, member.config_cls(**meta["model"]))
    _restore(directory, {"tokenizer": tok, "model": model})
    return Pipeline(tok, model, meta, precision)


def save(pipe: Pipeline, directory, **extra_meta) -> Path:
    """Write a pipeline's parameters and description as a model directory."""
    meta = {**members.model_meta(pipe.member.name, pipe.tokenizer.cfg, pipe.cfg), **pipe.meta, **extra_meta}
    params = {"tokenizer": nnx.to_pure_dict(nnx.state(pipe.tokenizer.module, nnx.Param)),
              "model": nnx.to_pure_dict(nnx.state(nnx.merge(pipe.graphdef, pipe.state), nnx.Param))}
    return checkpoint.save_model(directory, meta, params)


def _restore(directory, modules: dict, partial: bool = False) -> None:
    """Fill abstract modules in place with the parameters stored under the same keys."""
    abstract = {k: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for k, m in modules.items()}
    params = checkpoint.load_params(directory, abstract, partial=partial)
    for k, m in modules.items():
        state = nnx.state(m, nnx.Param)
        nnx.replace_by_pure_dict(state, params[k])
        nnx.update(m, state)
