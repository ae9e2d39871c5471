"""Training a member's generator on a frozen, already trained tokenizer.

`GeneratorTask` owns what the members share: loading the tokenizer named by `cfg.tokenizer_dir`, the
token cache, class dropout, previews through the member's sampler and the export. Each member only
says how a batch of tokens becomes a loss (`member_loss`) and which model fields its tokenizer fixes
(`tokenizer_fields`). The trainer calls the protocol of `arjax.train.tasks.Task`.
"""
from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax import members, xla_cpu
from arjax.data.token_cache import TokenCache, encode_to_cache
from arjax.nn.init import abstract_module, create
from arjax.ops import scales
from arjax.train import checkpoint
from arjax.train.losses import token_cross_entropy, top1_hits, var_metrics
from arjax.train.progressive import ProgressiveSchedule


def pure(module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


class GeneratorTask(abc.ABC):
    name: str  # the member's key in arjax.members.MEMBERS
    progressive = False      # implements progressive scale training (progressive.fraction > 0)
    self_correcting = False  # implements loss.self_correction

    def compiler_options(self) -> dict | None:
        return None  # the transformer's step runs fastest with XLA:CPU's defaults (arjax.xla_cpu)

    def __init__(self, cfg, abstract_tokenizer=None):
        """`abstract_tokenizer`: plan with this tokenizer config and shape-only weights, reading nothing."""
        self.cfg = cfg
        self.member = self.member_info()
        kind = members.tokenizer_kind(self.member.tokenizer)
        if abstract_tokenizer is None:
            meta = checkpoint.read_meta(cfg.tokenizer_dir)
            found = members.tokenizer_of(meta).name
            if found != kind.name:
                raise ValueError(f"tokenizer_dir={cfg.tokenizer_dir} holds a {found!r} tokenizer but {self.name} "
                                 f"trains on a {kind.name!r} one")
            self.tok_cfg = kind.config_cls(**meta["tokenizer"])
        else:
            self.tok_cfg = abstract_tokenizer
        tok_abstract = abstract_module(kind.cls, self.tok_cfg)
        self.tok_graphdef = nnx.split(tok_abstract)[0]
        if abstract_tokenizer is None:
            self.tok_params = checkpoint.load_params(cfg.tokenizer_dir, {"tokenizer": pure(tok_abstract)})["tokenizer"]
        else:
            self.tok_params = pure(tok_abstract)
        fixed = self.tokenizer_fields(self.tok_cfg)
        model = dict(cfg.model.to_dict(), **fixed)
        known = {f.name for f in dataclasses.fields(self.member.config_cls)}
        if unknown := sorted(set(model) - known):
            raise ValueError(f"config keys model.{', model.'.join(unknown)} do not apply to {self.name}; its model "
                             f"takes {sorted(known - set(fixed))}")
        self.model_cfg = self.member.config_cls(**model)
        self.graphdef = nnx.split(abstract_module(self.member.cls, self.model_cfg))[0]
        self.image_size = self.tok_cfg.image_size
        if not self.progressive and "progressive" in cfg and cfg.progressive.fraction:
            raise ValueError(f"progressive.fraction: progressive scale training is not implemented for "
                             f"{self.name}; set it to 0")
        self.self_correction = float(cfg.loss.get("self_correction", 0.0))
        if not 0.0 <= self.self_correction <= 1.0:
            raise ValueError(f"loss.self_correction is the largest share of tokens replaced, in [0, 1]; "
                             f"got {self.self_correction}")
        if self.self_correction and not self.self_correcting:
            raise ValueError(f"loss.self_correction is not implemented for {self.name}; set it to 0")

    @classmethod
    def member_info(cls) -> members.Member:
        return members.member(cls.name)

    @classmethod
    def tokenizer_fields(cls, tok_cfg) -> dict:
        """Model config fields the tokenizer decides (next-scale members: codes, code width, schedule)."""
        return {"vocab_size": tok_cfg.vocab_size, "cvae": tok_cfg.z_channels, "patch_nums": tok_cfg.patch_nums}

    @property
    def seq_len(self) -> int:
        """Tokens per cached example (the tokenizer's full schedule)."""
        return scales.seq_len(self.tok_cfg.patch_nums)

    def init_params(self, seed: int):
        return pure(create(self.member.cls, self.model_cfg, seed))

    def init_extra(self):
        return {}

    def constants(self):
        return {"tokenizer": self.tok_params}

    def tokenizer(self, consts):
        return nnx.merge(self.tok_graphdef, consts["tokenizer"])

    def prepare_source(self, source, workdir, progress: bool):
        """With data.cache_tokens, images are encoded into workdir/token_cache and training reads tokens
        (no encoder in the step); with loss.self_correction, the encoder's features too.
        data.cache_views=1 encodes each image once, un-augmented (resize + centre crop). data.cache_views=K > 1
        keeps the official augmentation: each image is encoded as K random crops + flips of VAR's training
        transform, and each epoch reads one of them per image, every view once per K epochs
        (arjax.data.token_cache). Without data.cache_tokens, cache_views does nothing."""
        views = self.cfg.data.get("cache_views", 1)
        if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
            raise ValueError(f"data.cache_views is the number of augmented encodings per image, an int >= 1 "
                             f"(1: one un-augmented encoding); got {views!r}")
        features = self.self_correction > 0
        if isinstance(source, TokenCache) and features and source.feature_shape is None:
            raise ValueError(f"loss.self_correction needs the encoder's features, and the token cache {source.path} "
                             f"holds tokens only: train from images (data.cache_tokens=True makes a cache with them)")
        if not self.cfg.data.cache_tokens or isinstance(source, TokenCache):
            return source
        if views > 1 and not self.cfg.data.augment:
            raise ValueError(f"data.cache_views={views} needs data.augment=True: without augmentation every view of "
                             f"an image would be the same encoding; set data.cache_views=1")
        params, gd = self.tok_params, self.tok_graphdef

        def encode(x):
            tok = nnx.merge(gd, params)
            if not features:
                return tok.encode(x)
            f = tok.features(x)
            return tok.tokens_from_features(f), f

        # compiled like the tokenizer at inference (arjax.xla_cpu): the quickstart's encode 75 -> 32 ms per 32 images
        return encode_to_cache(workdir / "token_cache", source, xla_cpu.inference_jit(encode),
                               image_size=self.image_size, vocab=self.tok_cfg.vocab_size,
                               batch_size=max(self.cfg.batch_size, 32), augment=self.cfg.data.augment,
                               progress=progress, with_features=features, views=int(views), seed=self.cfg.seed)

    def phase(self, step: int):
        return None

    def loss(self, params, extra, consts, batch, key, step, phase=None):
        del extra
        tok = self.tokenizer(consts)
        labels = batch["label"]
        drop = jax.random.bernoulli(key, self.cfg.loss.class_dropout, labels.shape)
        k_loss = jax.random.fold_in(key, 1)
        labels = jnp.where(drop, self.model_cfg.num_classes, labels)
        if self.self_correction:  # targets and inputs from features quantised with injected errors
            f = batch["features"] if "features" in batch else tok.features(batch["image"])
            tokens, _, x_in = tok.quantize.quantize_self_correcting(
                jax.lax.stop_gradient(f), jax.random.fold_in(key, 2), self.self_correction)
        else:
            tokens = batch["tokens"] if "tokens" in batch else jax.lax.stop_gradient(tok.encode(batch["image"]))
            x_in = None  # the teacher-forcing input of the real tokens (each member builds its own)
        model = nnx.merge(self.graphdef, params)
        loss, metrics = self.member_loss(model, tok, tokens, labels, k_loss, step, phase, x_in)
        return loss, ({"loss": loss, **metrics}, {})

    @abc.abstractmethod
    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        """(loss, metrics) of a batch of tokens under (class-dropped) labels; `x_in`, when given, is
        the teacher-forcing input to use instead of the one the tokens make."""

    def post_update(self, params, extra, aux, step, key):
        return params, extra, {}

    def sample_options(self) -> dict:
        return {}

    def preview(self, params, consts, batch, seed: int):
        """A few samples of each class, rows by class."""
        s = self.cfg.sample
        n_cls = min(self.model_cfg.num_classes, s.preview_classes)
        labels = jnp.repeat(jnp.arange(n_cls), s.preview_per_class)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(labels)))
        out = self.member.sample(self.tokenizer(consts), nnx.merge(self.graphdef, params), labels, keys, cfg=s.cfg,
                                 top_k=min(s.top_k, self.model_cfg.vocab_size), top_p=s.top_p,
                                 **self.sample_options())
        return out[0], labels

    def export_meta(self):
        return members.model_meta(self.name, self.tok_cfg, self.model_cfg)

    def export_params(self, params, consts):
        return {"tokenizer": consts["tokenizer"], "model": params}


class VARTask(GeneratorTask):
    """VAR: block-causal next-scale prediction, uniform 1/L token weights, optional progressive training."""
    name = "var"
    progressive = self_correcting = True

    def __init__(self, cfg, abstract_tokenizer=None):
        super().__init__(cfg, abstract_tokenizer)
        self.progressive = ProgressiveSchedule(
            len(self.model_cfg.patch_nums), cfg.steps, cfg.optim.warmup_steps, **cfg.progressive.to_dict())

    def phase(self, step: int) -> int:
        """The progressive-training stage (index of the last scale trained) at `step`."""
        return self.progressive.stage(step)

    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        mcfg = self.model_cfg
        if x_in is None:
            x_in = jax.lax.stop_gradient(tok.quantize.indices_to_var_input(tokens))
        stage = len(mcfg.patch_nums) - 1 if phase is None else phase
        lens = mcfg.scale_lens[:stage + 1]
        tokens = tokens[:, :sum(lens)]
        logits = model(labels, x_in, num_scales=stage + 1)
        # uniform 1/L token weights over all L tokens (as the reference, also when only a prefix is
        # trained); the newest scale of a progressive stage ramps in; summed over tokens, mean over batch
        weights = jnp.full((sum(lens),), 1.0 / mcfg.seq_len)
        weights = weights.at[sum(lens) - lens[-1]:].multiply(self.progressive.newest_scale_weight(stage, step))
        ce = token_cross_entropy(logits, tokens, self.cfg.loss.label_smoothing)
        return jnp.mean(jnp.sum(ce * weights, axis=-1)), var_metrics(logits, tokens, lens[-1])


class HMARTask(GeneratorTask):
    """HMAR: Markovian (block-diagonal) next-scale prediction plus the masked branch within a scale,
    with per-scale loss weights (`model.scale_weights`)."""
    name = "hmar"

    def __init__(self, cfg, abstract_tokenizer=None):
        super().__init__(cfg, abstract_tokenizer)
        from arjax.train.hmar_loss import config_token_weights
        self.weights = config_token_weights(self.model_cfg)

    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        from arjax.train.hmar_loss import hmar_loss
        x_in = jax.lax.stop_gradient(tok.quantize.indices_to_var_input(tokens))
        return hmar_loss(model, tokens, x_in, labels, key, weights=jnp.asarray(self.weights),
                         mask_weight=self.cfg.loss.mask_weight, label_smoothing=self.cfg.loss.label_smoothing)

    def sample_options(self) -> dict:
        steps = tuple(self.cfg.sample.steps) or None
        return {"steps": steps} if steps else {}


class FlexVARTask(GeneratorTask):
    """FlexVAR: each step trains on one schedule drawn from `flex.num_schedules` sub-schedules of the
    tokenizer's scales (the full one included). Scales are quantised independently, so a sub-schedule's
    tokens are a selection of the cached full-schedule tokens. The schedule is the step's static phase:
    one compiled step per schedule, drawn as a pure function of the step (resumption reproduces it)."""
    name = "flexvar"

    def __init__(self, cfg, abstract_tokenizer=None):
        super().__init__(cfg, abstract_tokenizer)
        self.schedules = train_schedules(self.tok_cfg.patch_nums, cfg.flex.num_schedules, cfg.flex.min_scales,
                                         cfg.seed)

    def phase(self, step: int) -> int:
        return int(np.random.default_rng([self.cfg.seed, step]).integers(len(self.schedules)))

    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        full = tuple(self.tok_cfg.patch_nums)
        pns = self.schedules[0 if phase is None else phase]
        spans = dict(zip(full, scales.begin_ends(full)))
        tokens = jnp.concatenate([tokens[:, slice(*spans[pn])] for pn in pns], axis=1)
        x_in = jax.lax.stop_gradient(tok.quantize.indices_to_var_input(tokens, patch_nums=pns))
        logits = model(labels, x_in, patch_nums=pns)
        ce = token_cross_entropy(logits, tokens, self.cfg.loss.label_smoothing)
        return jnp.mean(ce), var_metrics(logits, tokens, pns[-1] ** 2)

    def sample_options(self) -> dict:
        return {"cfg_style": self.cfg.sample.cfg_style}


def train_schedules(full, count: int, min_scales: int, seed: int) -> list[tuple[int, ...]]:
    """The full schedule, then `count - 1` distinct random sub-schedules that keep its first and last
    scales and at least `min_scales` scales (fewer if not that many distinct ones exist)."""
    full = tuple(full)
    if count < 1:
        raise ValueError(f"flex.num_schedules must be >= 1; got {count}")
    if not 2 <= min_scales <= len(full):
        raise ValueError(f"flex.min_scales must lie in [2, {len(full)}] for the schedule {full}; got {min_scales}")
    rng = np.random.default_rng(seed)
    out, inner = [full], full[1:-1]
    for _ in range(100 * count):
        if len(out) == count:
            break
        k = int(rng.integers(min_scales - 2, len(inner) + 1))
        keep = sorted(rng.choice(len(inner), size=k, replace=False))
        cand = (full[0], *(inner[i] for i in keep), full[-1])
        if cand not in out:
            out.append(cand)
    return out


def one_scale_fields(member: str, tok_cfg) -> dict:
    """Model fields of a member over a one-scale VQ tokenizer (the latent grid as one raster of tokens)."""
    if len(tok_cfg.patch_nums) != 1:
        raise ValueError(f"{member} trains on a one-scale VQ tokenizer (tokenizer.patch_nums=(grid,)); "
                         f"this one has the schedule {tuple(tok_cfg.patch_nums)}")
    return {"vocab_size": tok_cfg.vocab_size, "block_size": tok_cfg.patch_nums[0] ** 2}


class LlamaGenTask(GeneratorTask):
    """LlamaGen: raster-order next-token prediction; mean cross-entropy over all tokens, as train_c2i.py.
    Class dropout replaces labels by the null class (model.num_classes) at rate loss.class_dropout."""
    name = "llamagen"

    @classmethod
    def tokenizer_fields(cls, tok_cfg) -> dict:
        return one_scale_fields(cls.name, tok_cfg)

    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        logits = model(labels, tokens)
        ce = token_cross_entropy(logits, tokens, self.cfg.loss.label_smoothing)
        acc = jnp.mean(top1_hits(logits, tokens)) * 100
        return jnp.mean(ce), {"acc_mean": acc}

    def sample_options(self) -> dict:
        return {"cfg_interval": int(self.cfg.sample.get("cfg_interval", -1)),
                "temperature": float(self.cfg.sample.get("temperature", 1.0))}
