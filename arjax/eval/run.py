"""`arjax eval`: sample every class from a pipeline and score the samples with the built-in dataset's
classifier (arjax/eval/classifier.py, trained once per image size and cached).

    pipe = arjax.load("runs/quickstart/var/model")
    metrics = evaluate_pipeline(pipe, per_class=50, seed=0, cfg=1.5, top_k=900, top_p=0.96, classifier_dir=None)
    print(format_report(metrics))
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from arjax.data.synthetic import CLASS_NAMES
from arjax.eval.classifier import SHAPE_MIN_PROB, classifier_path, get_classifier
from arjax.eval.metrics import evaluate_samples, frechet_distance_between
from arjax.eval.real_data import FLOOR_SEED, NUM_CLASSES, REFERENCE_SEED, real_images01


def check_builtin_classes(pipe) -> int:
    k = int(pipe.cfg.num_classes)
    if k > NUM_CLASSES:
        raise ValueError(f"the model has {k} classes; the built-in dataset's classifier knows {NUM_CLASSES}: "
                         f"`arjax eval` scores models trained on the built-in dataset only")
    names = pipe.class_names
    if names is not None and list(names)[:k] != CLASS_NAMES[:k]:
        raise ValueError(f"the model's classes {list(names)[:3]}... are not the built-in dataset's "
                         f"{CLASS_NAMES[:3]}...: `arjax eval` scores models trained on the built-in dataset only")
    return k


def sample_all_classes(pipe, labels, *, seed: int, cfg: float, top_k: int, top_p: float,
                       batch_size: int = 64, progress: bool = True, sample_options=None) -> np.ndarray:
    """Samples (N, S, S, 3) in [0, 1] for `labels`, in chunks of `batch_size` (the last one padded, so
    the sampler compiles once); sample i draws from key fold_in(seed, i) whatever the chunking."""
    labels = np.asarray(labels, np.int32)
    chunks = []
    for s in tqdm(range(0, len(labels), batch_size), desc="sampling", unit="batch", disable=not progress):
        chunk = labels[s:s + batch_size]
        padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), np.int32)])
        images = pipe.sample(padded, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed, first_index=s,
                             **(sample_options or {}))
        chunks.append(np.asarray(images, np.float32)[:len(chunk)])
    return np.concatenate(chunks)


def reconstruct(tokenizer, images01, batch_size: int = 64) -> np.ndarray:
    """Images in [0, 1] through the tokenizer (encode, decode), back in [0, 1]."""
    out = [np.asarray(tokenizer.decode(tokenizer.encode(images01[s:s + batch_size] * 2 - 1)), np.float32)
           for s in range(0, len(images01), batch_size)]
    return np.clip((np.concatenate(out) + 1) / 2, 0, 1)


def evaluate_pipeline(pipe, *, per_class: int, seed: int = 0, cfg: float = 1.5, top_k: int = 900,
                      top_p: float = 0.96, classifier_dir=None, batch_size: int = 64, real_count: int | None = None,
                      out_dir=None, progress: bool = True, log=print, sample_options=None,
                      classifier=None) -> dict:
    """Sample `per_class` images of every class and score them (see metrics.evaluate_samples).

    classifier_dir: where classifiers are cached (default $ARJAX_CACHE/classifiers or ~/.cache/arjax/classifiers).
    real_count: real reference images (default: as many as samples), drawn with REFERENCE_SEED.
    The reference floor `real_frechet_distance` is the distance of as many other real images
    (FLOOR_SEED) as there are samples: what a generator that reproduced the data exactly would score.
    out_dir: when given, writes eval.json and samples.png (up to 8 samples per class) there.
    classifier: an already loaded one (else get_classifier(size, classifier_dir)).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1; got {per_class}")
    num_classes = check_builtin_classes(pipe)
    size = int(pipe.tokenizer.cfg.image_size)
    classifier = classifier or get_classifier(size, classifier_dir, log=log)

    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    images = sample_all_classes(pipe, labels, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, batch_size=batch_size,
                                progress=progress, sample_options=sample_options)
    if images.shape[1:3] != (size, size):  # e.g. FlexVAR sampled at another resolution
        raise ValueError(f"the samples are {images.shape[1]} px but the evaluation scores {size} px images (the "
                         f"tokenizer's size): evaluate at a schedule ending at the training resolution")
    real, real_labels = real_images01(real_count or len(labels), size, REFERENCE_SEED, num_classes)
    floor, floor_labels = real_images01(len(labels), size, FLOOR_SEED, num_classes)

    metrics = evaluate_samples(classifier, images, labels, real, real_labels)
    metrics["real_frechet_distance"] = frechet_distance_between(classifier, floor, real)
    # The tokenizer's ceiling: the same score for its reconstructions of the real images
    rec = reconstruct(pipe.tokenizer, floor, batch_size)
    rec_scores = evaluate_samples(classifier, rec, floor_labels, real)
    metrics["reconstruction"] = {"class_accuracy": rec_scores["class_accuracy"],
                                 "frechet_distance": rec_scores["frechet_distance"],
                                 "psnr": float(-10 * np.log10(np.mean(np.square(rec - floor)) + 1e-12))}
    metrics.update({
        "class_names": CLASS_NAMES[:num_classes], "image_size": size, "per_class": per_class,
        "sampling": {"seed": seed, "cfg": cfg, "top_k": top_k, "top_p": top_p},
        "classifier": {"dir": str(classifier.directory or classifier_path(size, classifier_dir)),
                       "heldout_acc": classifier.meta.get("heldout_acc"), "shape_min_prob": SHAPE_MIN_PROB},
    })
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        from arjax.viz import save_grid
        shown = np.concatenate([np.flatnonzero(labels == k)[:8] for k in range(num_classes)])
        metrics["samples_png"] = str(save_grid(out_dir / "samples.png", images[shown], labels[shown],
                                               per_row=min(per_class, 8), class_names=CLASS_NAMES))
        metrics["metrics_json"] = str(out_dir / "eval.json")
        (out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def format_report(metrics: dict) -> str:
    """Console lines: class accuracy, Frechet distance with its real-vs-real floor, per-class accuracy."""
    m = metrics
    lines = [
        f"class accuracy   {m['class_accuracy']:6.2f}%  of {m['num_samples']} samples assigned to their "
        f"conditioning class by the classifier",
        f"                 (colour right {m['colour_accuracy']:.1f}%, shape right {m['shape_accuracy']:.1f}%, "
        f"rejected as no class {m['rejected']:.1f}%)",
        f"Frechet distance {m['frechet_distance']:8.3f}  samples vs {m['num_real']} real images "
        f"(classifier features)",
    ]
    if "real_frechet_distance" in m:
        lines.append(f"                 {m['real_frechet_distance']:8.3f}  real vs real at the same counts "
                     f"(the floor)")
    if "real_class_accuracy" in m:
        lines.append(f"classifier on the real images: {m['real_class_accuracy']:.2f}%")
    if "reconstruction" in m:
        r = m["reconstruction"]
        lines.append(f"tokenizer reconstructions of real images (the ceiling): {r['class_accuracy']:.2f}%, "
                     f"Frechet distance {r['frechet_distance']:.3f}, PSNR {r['psnr']:.2f} dB")
    names = m.get("class_names") or [f"class {k}" for k in range(len(m["per_class_accuracy"]))]
    lines.append("per class:")
    for k, acc in enumerate(m["per_class_accuracy"]):
        if acc is not None:
            lines.append(f"  {k:2d} {names[k]:<16s} {acc:6.1f}%")
    if "samples_png" in m:
        lines.append(f"samples: {m['samples_png']}")
    if "metrics_json" in m:
        lines.append(f"metrics: {m['metrics_json']}")
    return "\n".join(lines)
