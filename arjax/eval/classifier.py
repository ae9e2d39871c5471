"""The evaluation classifier for the built-in dataset: a small CNN trained on real SyntheticShapes.

    clf = get_classifier(64, "~/.cache/arjax/classifiers")   # loads, or trains (~1 min on CPU) and saves
    logits, features = clf.logits_and_features(images_pm1)   # features: the 128-d penultimate layer

Outputs are the ten classes plus one more, REJECT = "none of the classes": the classifier also trains
on images with one class's shape in another class's colour (arjax/eval/recoloured.py), so a sample is
credited with its class only when both its shape and its colour are right.

Convolutions, then a global average pool, so the network takes any image size; it is trained at the
size it is used at, with a stem stride that grows with the size so the cost per image stays flat.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from arjax.eval.augment import augment
from arjax.eval.real_data import CLASSIFIER_HELDOUT_SEED, CLASSIFIER_TRAIN_SEED, NUM_CLASSES, real_uint8
from arjax.eval.recoloured import recoloured_uint8
from arjax.nn.init import abstract_params, create
from arjax.train import checkpoint

FAMILY = "classifier"
REJECT = NUM_CLASSES  # index of the "none of the classes" output
RECOLOURED_SHARE = 0.2  # share of training images with mismatched shape and colour


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = NUM_CLASSES
    channels: tuple[int, ...] = (32, 64, 128, 128)  # the first conv has stride `stem_stride`, the rest 2
    stem_stride: int = 1
    feature_dim: int = 128
    groups: int = 8  # GroupNorm groups after every conv

    @property
    def num_outputs(self) -> int:
        return self.num_classes + 1  # + REJECT

    @classmethod
    def for_image_size(cls, image_size: int) -> "ClassifierConfig":
        """About 16x16 positions after the stem at every size >= 16."""
        if image_size < 16:
            raise ValueError(f"the classifier needs images of at least 16 px; got {image_size}")
        return cls(stem_stride=max(1, image_size // 16))


class ShapesCNN(nnx.Module):
    def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        convs, norms, c_in = [], [], 3
        for i, c_out in enumerate(cfg.channels):
            stride = cfg.stem_stride if i == 0 else 2
            kernel = 3 if stride == 1 else 2 * stride
            convs.append(nnx.Conv(c_in, c_out, (kernel, kernel), strides=(stride, stride), padding="SAME",
                                  rngs=rngs))
            norms.append(nnx.GroupNorm(c_out, num_groups=cfg.groups, rngs=rngs))
            c_in = c_out
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.feature = nnx.Linear(c_in, cfg.feature_dim, rngs=rngs)
        self.head = nnx.Linear(cfg.feature_dim, cfg.num_outputs, rngs=rngs)

    def __call__(self, x):
        """(B, S, S, 3) in [-1, 1] -> logits (B, num_classes + 1), features (B, feature_dim)."""
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.gelu(norm(conv(x)))
        features = nnx.gelu(self.feature(x.mean(axis=(1, 2))))
        return self.head(features), features


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

    def logits_and_features(self, images_pm1, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) float in [-1, 1] -> logits (N, num_classes + 1), features (N, feature_dim), numpy.

        Every chunk is padded to `batch_size`, so any N compiles once."""
        x = np.asarray(images_pm1, np.float32)
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
            raise ValueError(f"images must have shape (N, S, S, 3); got {x.shape}")
        if x.shape[1] != self.image_size:
            raise ValueError(f"this classifier was trained on {self.image_size} px images; got {x.shape[1]} px "
                             f"(train one at this size with get_classifier({x.shape[1]}, ...))")
        logits, features = [], []
        for s in range(0, len(x), batch_size):
            chunk = x[s:s + batch_size]
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
            lg, ft = self._apply(self.state, chunk)
            logits.append(np.asarray(lg)[:n])
            features.append(np.asarray(ft)[:n])
        if not logits:
            return (np.zeros((0, self.cfg.num_outputs), np.float32), np.zeros((0, self.cfg.feature_dim), np.float32))
        return np.concatenate(logits), np.concatenate(features)

    def predict(self, images_pm1) -> np.ndarray:
        """(N,) int: the class, or REJECT (= num_classes) for "none of the classes"."""
        return self.logits_and_features(images_pm1)[0].argmax(-1)


# ---------------------------------------------------------------- training

def _training_pool(count: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_recoloured = int(round(count * RECOLOURED_SHARE))
    real, labels = real_uint8(count - n_recoloured, image_size, seed)
    mixed, _ = recoloured_uint8(n_recoloured, image_size, seed + 100_000)
    return (np.concatenate([real, mixed]),
            np.concatenate([labels, np.full(n_recoloured, REJECT, np.int32)]))


def _pm1(images_uint8):
    return images_uint8.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def heldout_accuracy(clf: Classifier, count: int = 2000, seed: int = CLASSIFIER_HELDOUT_SEED) -> dict:
    """% of held-out real images named correctly, and % of held-out recoloured images rejected."""
    real, labels = real_uint8(count, clf.image_size, seed)
    mixed, _ = recoloured_uint8(count // 2, clf.image_size, seed + 100_000)
    acc = float((clf.predict(_pm1(real)) == labels).mean() * 100)
    reject = float((clf.predict(_pm1(mixed)) == REJECT).mean() * 100)
    return {"heldout_acc": acc, "heldout_reject_acc": reject}


def train_classifier(image_size: int, *, steps: int = 800, batch_size: int = 64, seed: int = 0,
                     out_dir=None, lr: float = 3e-3, pool_size: int | None = None, heldout_count: int = 2000,
                     cfg: ClassifierConfig | None = None, log=print) -> Classifier:
    """Train on real SyntheticShapes (seed CLASSIFIER_TRAIN_SEED + seed), report held-out accuracy on
    another seed, and save to `out_dir` (a model directory: arjax.json + params/) when given."""
    t0 = time.perf_counter()
    cfg = cfg or ClassifierConfig.for_image_size(image_size)
    pool_size = pool_size or min(steps * batch_size, 12_000)
    images, labels = _training_pool(pool_size, image_size, CLASSIFIER_TRAIN_SEED + seed)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    t_data = time.perf_counter() - t0

    model = create(ShapesCNN, cfg, seed)
    graphdef, params = nnx.split(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10), steps, lr * 0.02)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_aug = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x = augment(k_aug, _pm1(images[idx]))
        y = labels[idx]

        def loss_fn(p):
            logits, _ = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, (logits.argmax(-1) == y).mean()

    key = jax.random.key(seed)
    for i in range(steps):
        params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(key, i))
        if log and (i + 1) % max(1, steps // 5) == 0:
            log(f"  classifier step {i + 1}/{steps}: loss {float(loss):.4f}  batch acc {float(acc) * 100:.1f}%")
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
    return Path(cache_dir or default_cache_dir()).expanduser() / f"shapes_{int(image_size)}px"


def get_classifier(image_size: int, cache_dir=None, *, steps: int = 800, log=print) -> Classifier:
    """The classifier for `image_size` px under `cache_dir` (default $ARJAX_CACHE/classifiers or
    ~/.cache/arjax/classifiers): loaded when present, else trained once and saved there.

    Training writes into a temporary sibling that is renamed into place when complete, so a killed run
    leaves nothing half-written and two concurrent runs keep whichever finished first."""
    path = classifier_path(image_size, cache_dir)
    if (path / checkpoint.META_FILE).is_file():
        return load_classifier(path)
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
