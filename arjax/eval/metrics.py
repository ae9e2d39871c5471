"""Sample quality from the evaluation classifier: the share of samples it assigns to their conditioning
class, and the Frechet distance between its features of samples and of real images.

The Frechet distance between two gaussians fitted to feature sets is
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)),
the formula of FID (Heusel et al. 2017), computed as the reference pytorch-fid code does, in float64.
It is biased upwards at small sample counts, so compare values only at equal counts; the real-vs-real
value at the same count (arjax/eval/run.py) is the floor a perfect generator would reach.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from arjax.eval.classifier import REJECT, Classifier


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D), float64, unbiased (divides by N - 1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2; got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    When sigma1 @ sigma2 is singular (fewer samples than feature dimensions, or features that do not
    vary) its square root is inaccurate or non-finite; then eps is added to both diagonals, as
    pytorch-fid does. A small imaginary part from rounding is dropped; a large one means the
    covariances are not valid and raises."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched shapes: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if singular or not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():  # handled: this is the regularised retry
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"imaginary component {imag:.3g} in the covariance square root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def unit_to_pm1(images01) -> np.ndarray:
    """[0, 1] (what Pipeline.sample returns) -> [-1, 1] (what the classifier takes)."""
    x = np.asarray(images01, np.float32)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if not np.isfinite([lo, hi]).all() or lo < -1e-3 or hi > 1.001:
        raise ValueError(f"images must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]")
    return np.clip(x, 0.0, 1.0) * 2.0 - 1.0


def _per_class(values: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    return [float(values[labels == k].mean() * 100) if (labels == k).any() else None for k in range(num_classes)]


def evaluate_samples(classifier: Classifier, images01, labels, real_images01, real_labels=None) -> dict:
    """Metrics of class-conditional samples `images01` (N, S, S, 3) in [0, 1] drawn for `labels` (N,),
    against real images `real_images01` (M, S, S, 3) in [0, 1].

    class_accuracy: % of samples the classifier assigns to their label (right colour, plausible shape).
    colour_accuracy, shape_accuracy: % whose colour / shape head alone names the label (diagnostics;
      colour_accuracy is about what a plain ten-class classifier would report on this dataset).
    rejected: % assigned to no class (the shape of one class in the colour of another).
    frechet_distance: between the classifier's penultimate features of samples and of real images.
    real_class_accuracy: the same accuracy on the real images, when `real_labels` is given.
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(images01),):
        raise ValueError(f"need one label per image: {len(images01)} images, labels of shape {labels.shape}")
    out = classifier.outputs(unit_to_pm1(images01))
    real = classifier.outputs(unit_to_pm1(real_images01))
    pred = out.predict()
    correct = pred == labels
    k = classifier.num_classes
    metrics = {
        "class_accuracy": float(correct.mean() * 100),
        "colour_accuracy": float((out.colour_logits.argmax(-1) == labels).mean() * 100),
        "shape_accuracy": float((out.shape_logits.argmax(-1) == labels).mean() * 100),
        "rejected": float((pred == REJECT).mean() * 100),
        "frechet_distance": frechet_distance(*feature_stats(out.features), *feature_stats(real.features)),
        "per_class_accuracy": _per_class(correct, labels, k),
        "num_samples": int(len(labels)),
        "num_real": int(len(real.features)),
    }
    if real_labels is not None:
        metrics["real_class_accuracy"] = float((real.predict() == np.asarray(real_labels)).mean() * 100)
    return metrics


def classifier_features(classifier: Classifier, images01) -> np.ndarray:
    return classifier.outputs(unit_to_pm1(images01)).features


def frechet_distance_between(classifier: Classifier, images_a01, images_b01) -> float:
    """Frechet distance between the classifier's features of two image sets in [0, 1]."""
    return frechet_distance(*feature_stats(classifier_features(classifier, images_a01)),
                            *feature_stats(classifier_features(classifier, images_b01)))
