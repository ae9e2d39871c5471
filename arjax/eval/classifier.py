"""The evaluation classifier for the built-in dataset: a small CNN trained on real SyntheticShapes.

    clf = get_classifier(64, "~/.cache/arjax/classifiers")   # loads, or trains (~1 min on CPU) and saves
    out = clf.outputs(images_pm1)       # colour logits, shape logits, 128-d features (for the Frechet distance)
    clf.predict(images_pm1)             # the class, or REJECT when shape and colour name different classes

Each class is one shape in one colour, so a classifier of the ten classes alone may name a class from
its colour and never look at the shape: it would pass a generator that paints the right colour in
the wrong shape. This one has two heads, the colour's class and the shape's class, and trains on real
images plus images with one class's shape in another class's colour (arjax/eval/recoloured.py). A
sample is assigned to the class k of its colour when the shape head finds k's shape plausible, and to
REJECT ("none of the classes") when it does not (SHAPE_MIN_PROB).

Convolutions, then global average and max pooling (max keeps small shapes from being averaged away),
so the network takes any image size; it is trained at the size it is used at, with a stem stride that
grows with the size so that the cost per image stays flat.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from arjax.eval.augment import augment, noise_bank
from arjax.eval.real_data import CLASSIFIER_HELDOUT_SEED, CLASSIFIER_TRAIN_SEED, NUM_CLASSES, real_uint8
from arjax.data.synthetic import FORMAT_VERSION
from arjax.data.transforms import to_pm1
from arjax.eval.recoloured import recoloured_uint8
from arjax.nn.init import abstract_params, create
from arjax.train import checkpoint

FAMILY = "classifier"
REJECT = NUM_CLASSES  # predict() for "none of the classes": shape and colour disagree
# Reject when the shape head gives the colour's shape less than this. Requiring the shape head's
# argmax to agree instead also rejects real images whose small shape it finds ambiguous (0.5-1% of
# them); at 0.1, >= 99.9% of real images pass and ~80% of shape/colour mismatches are still rejected.
SHAPE_MIN_PROB = 0.1
RECOLOURED_SHARE = 0.5  # share of training images with mismatched shape and colour
RECOLOURED_SEED_OFFSET = 100_000  # recoloured images draw from seed + this: their own random stream


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = NUM_CLASSES
    channels: tuple[int, ...] = (16, 32, 64, 128)  # a stem conv, then 3x3 convs of stride 2
    stem_kernel: int = 3
    stem_stride: int = 1
    feature_dim: int = 128
    groups: int = 8  # GroupNorm groups after every conv

    @classmethod
    def for_image_size(cls, image_size: int) -> "ClassifierConfig":
        """About 32x32 positions after the stem at every size >= 32."""
        if image_size < 16:
            raise ValueError(f"the classifier needs images of at least 16 px; got {image_size}")
        stride = max(1, image_size // 32)
        return cls(stem_kernel=3 if stride == 1 else 2 * stride, stem_stride=stride)


class ShapesCNN(nnx.Module):
    def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        convs, norms, c_in = [], [], 3
        for i, c_out in enumerate(cfg.channels):
            kernel, stride = (cfg.stem_kernel, cfg.stem_stride) if i == 0 else (3, 2)
            convs.append(nnx.Conv(c_in, c_out, (kernel, kernel), strides=(stride, stride), padding="SAME",
                                  rngs=rngs))
            norms.append(nnx.GroupNorm(c_out, num_groups=cfg.groups, rngs=rngs))
            c_in = c_out
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.feature = nnx.Linear(2 * c_in, cfg.feature_dim, rngs=rngs)
        self.colour_head = nnx.Linear(cfg.feature_dim, cfg.num_classes, rngs=rngs)
        self.shape_head = nnx.Linear(cfg.feature_dim, cfg.num_classes, rngs=rngs)

    def __call__(self, x):
        """(B, S, S, 3) in [-1, 1] -> colour logits (B, K), shape logits (B, K), features (B, feature_dim)."""
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.gelu(norm(conv(x)))
        pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)  # max: small shapes
        features = nnx.gelu(self.feature(pooled))
        return self.colour_head(features), self.shape_head(features), features


class ClassifierOutputs(NamedTuple):
    colour_logits: np.ndarray  # (N, K): which class's colour
    shape_logits: np.ndarray   # (N, K): which class's shape
    features: np.ndarray       # (N, feature_dim): the penultimate layer

    def shape_probs(self) -> np.ndarray:
        z = self.shape_logits - self.shape_logits.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def predict(self) -> np.ndarray:
        """(N,) int: the class of the colour, or REJECT when the shape head finds that class's shape
        unlikely (probability < SHAPE_MIN_PROB)."""
        colour = self.colour_logits.argmax(-1)
        plausible = self.shape_probs()[np.arange(len(colour)), colour] >= SHAPE_MIN_PROB
        return np.where(plausible, colour, REJECT)


class Classifier:
    """A trained ShapesCNN and its description (`meta`), with batched, jitted inference."""

    def __init__(self, module: ShapesCNN, meta: dict, directory: Path | None = None):
        self.cfg = module.cfg
        self.meta = meta
        self.directory = directory
        self.image_size = int(meta["image_size"])
        self.graphdef, self.state = nnx.split(module)
        gd = self.graphdef
        self._apply = jax.jit(lambda st, x: nnx.merge(gd, st)(x))

    @property
    def module(self) -> ShapesCNN:
        return nnx.merge(self.graphdef, self.state)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def outputs(self, images_pm1, batch_size: int = 250) -> ClassifierOutputs:
        """(N, S, S, 3) float in [-1, 1] -> ClassifierOutputs of numpy arrays.

        Every chunk is padded to `batch_size`, so any N compiles once."""
        x = np.asarray(images_pm1, np.float32)
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
            raise ValueError(f"images must have shape (N, S, S, 3); got {x.shape}")
        if x.shape[1] != self.image_size:
            raise ValueError(f"this classifier was trained on {self.image_size} px images; got {x.shape[1]} px "
                             f"(get one for this size with get_classifier({x.shape[1]}, ...))")
        chunks = []
        for s in range(0, len(x), batch_size):
            chunk = x[s:s + batch_size]
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
            chunks.append([np.asarray(a)[:n] for a in self._apply(self.state, chunk)])
        if not chunks:
            k, d = self.num_classes, self.cfg.feature_dim
            return ClassifierOutputs(np.zeros((0, k), np.float32), np.zeros((0, k), np.float32),
                                     np.zeros((0, d), np.float32))
        return ClassifierOutputs(*(np.concatenate(parts) for parts in zip(*chunks)))

    def predict(self, images_pm1) -> np.ndarray:
        """(N,) int: the class of the colour, or REJECT (= num_classes) when the shape does not fit it."""
        return self.outputs(images_pm1).predict()


# ---------------------------------------------------------------- training

def _training_pool(count: int, image_size: int, seed: int):
    """uint8 images with their (colour class, shape class) targets: real images, then recoloured ones."""
    n_recoloured = int(round(count * RECOLOURED_SHARE))
    real, labels = real_uint8(count - n_recoloured, image_size, seed)
    mixed, pairs = recoloured_uint8(n_recoloured, image_size, seed + RECOLOURED_SEED_OFFSET)
    colour = np.concatenate([labels, pairs[:, 1]]).astype(np.int32)
    shape = np.concatenate([labels, pairs[:, 0]]).astype(np.int32)
    return np.concatenate([real, mixed]), colour, shape


def heldout_accuracy(clf: Classifier, count: int = 2000, seed: int = CLASSIFIER_HELDOUT_SEED) -> dict:
    """% of held-out real images named correctly, and % of held-out recoloured images rejected."""
    real, labels = real_uint8(count, clf.image_size, seed)
    mixed, _ = recoloured_uint8(count // 2, clf.image_size, seed + RECOLOURED_SEED_OFFSET)
    acc = float((clf.predict(to_pm1(real)) == labels).mean() * 100)
    reject = float((clf.predict(to_pm1(mixed)) == REJECT).mean() * 100)
    return {"heldout_acc": round(acc, 2), "heldout_reject_acc": round(reject, 2)}


def train_classifier(image_size: int, *, steps: int = 1500, batch_size: int = 32, seed: int = 0,
                     out_dir=None, lr: float = 3e-3, pool_size: int | None = None, heldout_count: int = 2000,
                     cfg: ClassifierConfig | None = None, log=print) -> Classifier:
    """Train on real SyntheticShapes (seed CLASSIFIER_TRAIN_SEED + seed), report held-out accuracy on
    another seed, and save to `out_dir` (a model directory: arjax.json + params/) when given."""
    t0 = time.perf_counter()
    cfg = cfg or ClassifierConfig.for_image_size(image_size)
    pool_size = pool_size or min(steps * batch_size, 12_000)
    pool = tuple(map(jnp.asarray, _training_pool(pool_size, image_size, CLASSIFIER_TRAIN_SEED + seed)))
    t_data = time.perf_counter() - t0

    model = create(ShapesCNN, cfg, seed)
    graphdef, params = nnx.split(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10), steps, lr * 0.02)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key, pool, bank):  # the pool is an argument: as a constant it would be compiled in
        images, colours, shapes = pool
        k_idx, k_aug = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x = augment(k_aug, to_pm1(images[idx]), bank)
        colour, shape = colours[idx], shapes[idx]

        def loss_fn(p):
            colour_logits, shape_logits, _ = nnx.merge(graphdef, p)(x)
            ce = optax.softmax_cross_entropy_with_integer_labels
            loss = ce(colour_logits, colour).mean() + ce(shape_logits, shape).mean()
            return loss, (shape_logits.argmax(-1) == shape).mean()

        (loss, shape_acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, shape_acc

    k_bank, key = jax.random.split(jax.random.key(seed))
    bank = noise_bank(k_bank, image_size)
    for i in range(steps):
        params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(key, i), pool, bank)
        if log and (i + 1) % max(1, steps // 5) == 0:
            log(f"  classifier step {i + 1}/{steps}: loss {float(loss):.4f}  batch shape acc {float(acc) * 100:.1f}%")
    t_train = time.perf_counter() - t0 - t_data

    meta = {"family": FAMILY, "image_size": int(image_size), "arch": dataclasses.asdict(cfg),
            "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "pool_size": pool_size,
                      "data_seed": CLASSIFIER_TRAIN_SEED + seed}}
    clf = Classifier(nnx.merge(graphdef, params), meta)
    meta.update(heldout_accuracy(clf, heldout_count))
    meta["train"]["seconds"] = round(time.perf_counter() - t0, 1)
    if log:
        log(f"classifier {image_size} px: held-out accuracy {meta['heldout_acc']:.2f}% on real images, "
            f"{meta['heldout_reject_acc']:.2f}% of shape/colour mismatches rejected "
            f"({meta['train']['seconds']:.0f} s: data {t_data:.0f} s, training {t_train:.0f} s)")
    if out_dir is not None:
        clf.directory = save_classifier(clf, out_dir)
    return clf


# ---------------------------------------------------------------- saving and loading

def save_classifier(clf: Classifier, directory) -> Path:
    return checkpoint.save_model(directory, clf.meta, nnx.to_pure_dict(nnx.state(clf.module, nnx.Param)))


def load_classifier(directory) -> Classifier:
    meta = checkpoint.read_meta(directory)
    if meta.get("family") != FAMILY:
        raise ValueError(f"{directory} holds a {meta.get('family')!r} model, not an evaluation classifier")
    cfg = ClassifierConfig(**{**meta["arch"], "channels": tuple(meta["arch"]["channels"])})
    params = checkpoint.load_params(directory, abstract_params(ShapesCNN, cfg))
    module = nnx.eval_shape(lambda: ShapesCNN(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
    return Classifier(module, meta, Path(directory).absolute())


def default_cache_dir() -> Path:
    return Path(os.environ.get("ARJAX_CACHE", Path.home() / ".cache" / "arjax")) / "classifiers"


def classifier_path(image_size: int, cache_dir=None) -> Path:
    """Where the `image_size` px classifier lives: `cache_dir` itself when it holds one, else a
    subdirectory shapes_v{dataset format}_{S}px of it (default cache: $ARJAX_CACHE/classifiers or ~/.cache/arjax/classifiers)."""
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    if (cache / checkpoint.META_FILE).is_file():
        return cache
    return cache / f"shapes_v{FORMAT_VERSION}_{int(image_size)}px"


def get_classifier(image_size: int, cache_dir=None, *, steps: int = 1500, log=print) -> Classifier:
    """The classifier for `image_size` px at classifier_path(image_size, cache_dir): loaded when
    present, else trained once and saved there.

    Training writes into a temporary sibling that is renamed into place when complete, so a killed run
    leaves nothing half-written and two concurrent runs keep whichever finished first."""
    path = classifier_path(image_size, cache_dir)
    if (path / checkpoint.META_FILE).is_file():
        clf = load_classifier(path)
        if clf.image_size != image_size:
            raise ValueError(f"{path} holds a classifier for {clf.image_size} px images, not {image_size} px")
        return clf
    if log:
        log(f"no evaluation classifier at {path}: training one on real {image_size} px images (saved for reuse)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        train_classifier(image_size, steps=steps, out_dir=tmp / "model", log=log)
        try:
            os.rename(tmp / "model", path)
        except OSError:  # another run got there first
            if not (path / checkpoint.META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_classifier(path)
