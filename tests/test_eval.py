"""The built-in dataset's quality check: Frechet distance against independent formulas, the classifier
trained here from scratch (>= 99% on held-out real images), and the metrics shown able to fail.

One 32 px classifier is trained for the whole module (~40 s on 2 CPU cores), a shortened run of what
`arjax eval` trains and caches (1500 steps)."""
from types import SimpleNamespace

import numpy as np
import pytest

from arjax.data.synthetic import CLASS_NAMES, SyntheticShapes
from arjax.eval import (REJECT, evaluate_pipeline, evaluate_samples, feature_stats, format_report, frechet_distance,
                        get_classifier, load_classifier)
from arjax.eval import classifier as classifier_module
from arjax.eval.real_data import FLOOR_SEED, REFERENCE_SEED, real_images01
from arjax.eval.recoloured import RecolouredShapes, recoloured_uint8

SIZE = 32
N = 300  # images per set in the metric tests: 30 per class


# ---------------------------------------------------------------- Frechet distance

def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_by_eigenvalues(mu1, s1, mu2, s2):
    """Independent formula: tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD matrix."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    v1, v2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_an_eigenvalue_computation_for_full_covariances():
    rng = np.random.default_rng(1)
    d = 24
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _random_spd(rng, d), _random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_by_eigenvalues(mu1, s1, mu2, s2), rel=1e-7)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-7)


def test_frechet_distance_is_zero_for_equal_gaussians_and_ignores_a_common_shift():
    rng = np.random.default_rng(2)
    d = 24
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _random_spd(rng, d), _random_spd(rng, d)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    shift = 5.0 * rng.standard_normal(d)
    assert frechet_distance(mu1 + shift, s1, mu2 + shift, s2) == pytest.approx(frechet_distance(mu1, s1, mu2, s2),
                                                                               rel=1e-9)
    assert frechet_distance(mu1 + 1.0, s1, mu1, s1) == pytest.approx(d, rel=1e-9)  # |shift|^2 when covs agree


def test_frechet_distance_of_rank_deficient_covariances_is_finite():
    # Fewer samples than dimensions, and a feature that never varies: a singular covariance product.
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.5
    a[:, 0] = b[:, 0] = 1.0
    fd = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert np.isfinite(fd) and fd > 0
    assert abs(frechet_distance(*feature_stats(a), *feature_stats(a))) < 1e-2


def test_feature_stats_is_the_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((50, 7)).astype(np.float32) * 3 + 1
    mu, sigma = feature_stats(f)
    x = f.astype(np.float64)
    centred = x - x.sum(0) / len(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.sum(0) / len(x), rtol=1e-12)
    np.testing.assert_allclose(sigma, centred.T @ centred / (len(x) - 1), rtol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(x.T), rtol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(f[:1])


# ---------------------------------------------------------------- the classifier

def test_recoloured_images_with_matching_classes_are_the_dataset_images():
    # RecolouredShapes follows SyntheticShapes.render draw for draw; if the dataset changes, this fails.
    real, mixed = SyntheticShapes(20, 40, seed=5), RecolouredShapes(20, 40, seed=5)
    for i in range(20):
        assert np.array_equal(mixed.render_pair(i, i % 10, i % 10), real[i]["image"])
    images, pairs = recoloured_uint8(50, 40, seed=5)
    assert (pairs[:, 0] != pairs[:, 1]).all() and images.shape == (50, 40, 40, 3)


@pytest.fixture(scope="module")
def clf_dir(builtin_classifier_dir):
    assert SIZE == 32  # the shared session classifier's size
    return builtin_classifier_dir


@pytest.fixture(scope="module")
def clf(clf_dir):
    return load_classifier(clf_dir)


@pytest.fixture(scope="module")
def reference():
    return real_images01(N, SIZE, REFERENCE_SEED)


@pytest.fixture(scope="module")
def other_real():
    return real_images01(N, SIZE, FLOOR_SEED)


def test_classifier_reaches_99_percent_on_heldout_real_images(clf, reference):
    assert clf.meta["family"] == "classifier" and clf.meta["image_size"] == SIZE
    assert clf.meta["heldout_acc"] >= 99.0, clf.meta
    images, labels = reference  # a second held-out set, scored here rather than by the trainer
    pred = clf.predict(images * 2 - 1)
    assert (pred == labels).mean() >= 0.99


def test_classifier_checks_the_shape_not_only_the_colour(clf):
    images, pairs = recoloured_uint8(200, SIZE, seed=123)
    out = clf.outputs(images.astype(np.float32) / 127.5 - 1)
    assert (out.colour_logits.argmax(-1) == pairs[:, 1]).mean() >= 0.95
    # This short-trained classifier rejects ~60% of them (the cached 1500-step one ~75-80%).
    assert (out.predict() == REJECT).mean() >= 0.4


def test_saved_classifier_is_reused_not_retrained(clf, clf_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("get_classifier retrained although a classifier was saved")

    monkeypatch.setattr(classifier_module, "train_classifier", fail)
    x = np.random.default_rng(0).uniform(-1, 1, (5, SIZE, SIZE, 3)).astype(np.float32)
    for again in (get_classifier(SIZE, clf_dir), get_classifier(SIZE, clf_dir.parent)):
        np.testing.assert_array_equal(again.outputs(x).features, clf.outputs(x).features)
    with pytest.raises(ValueError, match="trained on 32 px"):
        clf.outputs(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="32 px"):
        get_classifier(64, clf_dir)


# ---------------------------------------------------------------- the metrics, and that they can fail

def test_real_images_score_full_accuracy_and_a_small_frechet_distance(clf, reference, other_real):
    m = evaluate_samples(clf, other_real[0], other_real[1], *reference)
    assert m["class_accuracy"] >= 98.0 and m["real_class_accuracy"] >= 98.0
    assert len(m["per_class_accuracy"]) == 10 and min(m["per_class_accuracy"]) >= 90.0
    assert 0.0 < m["frechet_distance"] < 10.0, m["frechet_distance"]


def test_shuffled_labels_score_low_accuracy(clf, reference, other_real):
    images, labels = other_real
    shuffled = np.roll(labels, 3)  # every label wrong
    assert evaluate_samples(clf, images, shuffled, *reference)["class_accuracy"] <= 5.0
    random = np.random.default_rng(0).permutation(labels)
    assert evaluate_samples(clf, images, random, *reference)["class_accuracy"] <= 25.0


def test_right_colour_in_the_wrong_shape_is_not_credited(clf, reference):
    images, pairs = recoloured_uint8(N, SIZE, seed=321)
    m = evaluate_samples(clf, images.astype(np.float32) / 255, pairs[:, 1], *reference)
    assert m["colour_accuracy"] >= 95.0
    assert m["class_accuracy"] <= 60.0 and m["rejected"] >= 40.0  # measured 35% and 65%


def test_noise_is_far_from_real_in_frechet_distance(clf, reference, other_real):
    floor = evaluate_samples(clf, other_real[0], other_real[1], *reference)["frechet_distance"]
    noise = np.random.default_rng(0).uniform(0, 1, (N, SIZE, SIZE, 3)).astype(np.float32)
    m = evaluate_samples(clf, noise, other_real[1], *reference)
    assert m["frechet_distance"] > 20 * floor, (m["frechet_distance"], floor)
    assert m["class_accuracy"] <= 30.0
    # Real images under a 4x4 box blur (beyond the blur the classifier trains to ignore) sit in between.
    blurred = np.mean([np.roll(other_real[0], (i, j), (1, 2)) for i in range(4) for j in range(4)], axis=0)
    fd_blur = evaluate_samples(clf, blurred, other_real[1], *reference)["frechet_distance"]
    assert 2 * floor < fd_blur < m["frechet_distance"] / 10, (floor, fd_blur)


def test_frechet_distance_sees_lost_diversity_that_accuracy_cannot(clf, reference, other_real):
    images, labels = other_real
    floor = evaluate_samples(clf, images, labels, *reference)["frechet_distance"]
    collapsed = evaluate_samples(clf, images[np.arange(N) % 10], labels, *reference)  # one image per class
    assert collapsed["class_accuracy"] >= 98.0
    assert collapsed["frechet_distance"] > 5 * floor, (collapsed["frechet_distance"], floor)


def test_images_outside_0_1_are_refused(clf, reference):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_samples(clf, reference[0] * 2 - 1, reference[1], *reference)
    with pytest.raises(ValueError, match="one label per image"):
        evaluate_samples(clf, reference[0], reference[1][:-1], *reference)


# ---------------------------------------------------------------- evaluate_pipeline

class _DataPipe:
    """Stands in for arjax.Pipeline: 'samples' are dataset images of the requested class (a perfect
    generator), or with `wrong_shape` one class's colour in the next class's shape."""

    def __init__(self, num_classes=10, wrong_shape=False, class_names=tuple(CLASS_NAMES)):
        self.cfg = SimpleNamespace(num_classes=num_classes)
        # a tokenizer that shrinks the [-1, 1] range by 10%: reconstructions stay recognisable
        self.tokenizer = SimpleNamespace(cfg=SimpleNamespace(image_size=SIZE), encode=lambda x: x,
                                         decode=lambda t: 0.9 * t)
        self.class_names = list(class_names)
        self.source = RecolouredShapes(10_000, SIZE, seed=99)
        self.wrong_shape, self.calls = wrong_shape, []

    def sample(self, labels, *, cfg, top_k, top_p, seed, first_index=0):
        self.calls.append((len(labels), first_index))
        shapes = [(int(y) + 1) % 10 if self.wrong_shape else int(y) for y in labels]
        return np.stack([self.source.render_pair(first_index + i, s, int(y))
                         for i, (s, y) in enumerate(zip(shapes, labels))]).astype(np.float32) / 255


def test_evaluate_pipeline_scores_a_perfect_generator_near_the_real_floor(clf_dir, tmp_path):
    pipe = _DataPipe()
    m = evaluate_pipeline(pipe, per_class=20, seed=0, cfg=1.5, top_k=900, top_p=0.96, classifier_dir=clf_dir,
                          batch_size=64, out_dir=tmp_path, progress=False)
    assert pipe.calls == [(64, 0), (64, 64), (64, 128), (64, 192)]  # 200 samples, last chunk padded
    assert m["num_samples"] == 200 and m["class_accuracy"] >= 98.0
    assert m["frechet_distance"] < 3 * m["real_frechet_distance"] + 1.0
    from arjax.eval.real_data import FLOOR_SEED, real_images01
    x, _ = real_images01(200, SIZE, FLOOR_SEED)
    want_psnr = -10 * np.log10(np.mean((0.9 * x.astype(np.float64) + 0.05 - x) ** 2))
    assert m["reconstruction"]["psnr"] == pytest.approx(want_psnr, abs=1e-3)
    assert m["reconstruction"]["class_accuracy"] >= 95.0
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "eval.json").is_file()
    report = format_report(m)
    for text in ("class accuracy", "Frechet distance", "real vs real", "red circle", "the ceiling",
                 str(tmp_path / "eval.json")):
        assert text in report


def test_evaluate_pipeline_fails_a_generator_with_wrong_shapes(clf_dir):
    m = evaluate_pipeline(_DataPipe(wrong_shape=True), per_class=20, classifier_dir=clf_dir, progress=False)
    assert m["colour_accuracy"] >= 95.0 and m["class_accuracy"] <= 70.0  # measured 47%: far below the 90% bar
    assert m["frechet_distance"] > 3 * m["real_frechet_distance"]


def test_evaluate_pipeline_refuses_models_of_other_datasets(clf_dir):
    with pytest.raises(ValueError, match="built-in dataset"):
        evaluate_pipeline(_DataPipe(num_classes=1000), per_class=1, classifier_dir=clf_dir, progress=False)
    with pytest.raises(ValueError, match="built-in dataset"):
        evaluate_pipeline(_DataPipe(class_names=[f"n{i}" for i in range(10)]), per_class=1, classifier_dir=clf_dir,
                          progress=False)


@pytest.mark.slow
def test_evaluate_pipeline_runs_a_real_var_pipeline(clf_dir, tmp_path):
    """The real Pipeline.sample path (random weights, so the samples are noise and fail the check)."""
    from conftest import tiny_builtin_var
    pipe = tiny_builtin_var()
    assert pipe.tokenizer.cfg.image_size == SIZE
    m = evaluate_pipeline(pipe, per_class=3, seed=0, cfg=1.5, top_k=0, top_p=1.0, classifier_dir=clf_dir,
                          batch_size=16, out_dir=tmp_path)
    assert m["num_samples"] == 30 and len(m["per_class_accuracy"]) == 10
    assert m["class_accuracy"] <= 50.0 and m["frechet_distance"] > 5 * m["real_frechet_distance"]
