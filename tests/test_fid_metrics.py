"""arjax.eval.fid.metrics: the ADM evaluator's FID / sFID / IS / precision-recall, checked against the
evaluator's own numbers (shared/fixtures/fid) and against independent formulas."""
import json

import numpy as np
import pytest
from conftest import FIXTURES

from arjax.eval.fid.metrics import (RunningStatistics, frechet_distance, inception_score, precision_recall,
                                    statistics)


# ---------------------------------------------------------------- ADM's numbers

@pytest.fixture(scope="module")
def adm():
    d = FIXTURES / "fid"
    if not (d / "metrics_cases.npz").is_file():
        pytest.skip(reason=f"ADM fixture {d} is absent (set ARJAX_FIXTURES to the shared/fixtures folder)")
    with np.load(d / "metrics_cases.npz") as z:
        cases = {k: z[k] for k in z.files}
    return cases, json.loads((d / "expected.json").read_text())["metrics_cases"]


@pytest.mark.parametrize("kind, key", [("pool", "fid"), ("spatial", "sfid")])
def test_fid_matches_adm(adm, kind, key):
    cases, expected = adm
    got = frechet_distance(statistics(cases[f"sample_{kind}"]), statistics(cases[f"ref_{kind}"]))
    assert got == pytest.approx(expected[key], rel=1e-3)


def test_inception_score_matches_adm(adm):
    cases, expected = adm
    got = inception_score(cases["sample_pool"], cases["softmax_w"], split_size=expected["split_size"])
    assert got == pytest.approx(expected["inception_score"], rel=1e-4)


@pytest.mark.parametrize("batch", [1000, 700])  # 1000: ADM's run; 700: other blocks, ragged edges
def test_precision_recall_matches_adm(adm, batch):
    cases, expected = adm
    p, r = precision_recall(cases["ref_pool"], cases["sample_pool"], k=expected["k"], batch_size=batch)
    assert abs(p - expected["precision"]) <= 2e-3
    assert abs(r - expected["recall"]) <= 2e-3


# ---------------------------------------------------------------- statistics and Frechet distance

def test_statistics_is_mean_and_cov():
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    mu, sigma = statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, np.mean(x.astype(np.float64), axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_running_statistics_over_uneven_batches():
    rng = np.random.default_rng(1)
    x = 1e3 + rng.standard_normal((161, 9)) * np.linspace(0.1, 3, 9)  # large offset: no cancellation allowed
    running = RunningStatistics()
    for a, b in [(0, 1), (1, 8), (8, 108), (108, 111), (111, 161)]:
        running.update(x[a:b])
    assert running.count == 161
    mu, sigma = running.result()
    mu_ref, sigma_ref = statistics(x)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10, atol=1e-12 * np.abs(sigma_ref).max())


def test_frechet_distance_of_identical_statistics_is_zero():
    x = np.random.default_rng(2).standard_normal((200, 8))
    stats = statistics(x)
    assert abs(frechet_distance(stats, stats)) < 1e-8


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance((mu1, np.diag(v1)), (mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- Inception Score

def test_inception_score_of_uniform_predictions_is_one():
    pool3 = np.random.default_rng(4).standard_normal((30, 16)).astype(np.float32)
    assert inception_score(pool3, np.zeros((16, 7), np.float32), split_size=10) == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_confident_spread_predictions_is_class_count():
    classes = 10
    labels = np.arange(200) % classes
    pool3 = np.eye(classes, dtype=np.float32)[labels]  # logits 30 on the class, 0 elsewhere: p ~ one-hot
    score = inception_score(pool3, 30 * np.eye(classes, dtype=np.float32), split_size=100)
    assert score == pytest.approx(classes, rel=1e-4)


# ---------------------------------------------------------------- precision / recall

def _brute_force_pr(ref, smp, k):
    """Float64, whole matrices: the definition without ADM's float16."""
    def sqdist(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    ref, smp = np.asarray(ref, np.float64), np.asarray(smp, np.float64)
    r_ref, r_smp = np.sort(sqdist(ref, ref), 1)[:, k], np.sort(sqdist(smp, smp), 1)[:, k]
    d = sqdist(ref, smp)
    return (d <= r_ref[:, None]).any(0).mean(), (d <= r_smp[None, :]).any(1).mean()


@pytest.mark.parametrize("batch", [16, 1000])
def test_precision_recall_matches_brute_force(batch):
    # Integer features in [0, 11] over 8 dims: every square, sum, product and intermediate of the
    # distances is an integer of magnitude <= 2048, exact in float16, so ADM's rounding cannot flip a
    # point and the answers must agree exactly.
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 10, (50, 8)).astype(np.float32)
    smp = rng.integers(0, 5, (37, 8)).astype(np.float32)  # a narrower set: misses part of ref's support
    smp[:10, :4] = rng.integers(0, 10, (10, 4))
    smp[-6:] += 7  # and a cluster outside it
    expected = _brute_force_pr(ref, smp, 3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the case discriminates
    assert precision_recall(ref, smp, k=3, batch_size=batch) == pytest.approx(expected, abs=0)


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(6).standard_normal((60, 32)).astype(np.float32)
    assert precision_recall(x, x.copy(), k=3, batch_size=25) == (1.0, 1.0)


def test_precision_recall_falls_back_to_float32_when_float16_overflows():
    rng = np.random.default_rng(7)
    ref = rng.normal(300, 30, (40, 8)).astype(np.float32)  # squares ~9e4 > 65504: float16 overflows
    smp = rng.normal(310, 30, (33, 8)).astype(np.float32)
    got = precision_recall(ref, smp, k=3, batch_size=16)
    assert np.isfinite(got).all()
    assert got == pytest.approx(_brute_force_pr(ref, smp, 3), abs=0)


def test_float16_rounding_matches_a_real_cast():
    from arjax.eval.fid.metrics import _f16
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 5, 20000)).astype(np.float32)
    x = np.concatenate([x, np.float32([2 ** -14, 2 ** -25, 3 * 2 ** -25, 65504, 65519, 65520])])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_f16(x)), expected)


# ---------------------------------------------------------------- errors

def test_too_few_samples_for_a_split():
    with pytest.raises(ValueError, match=r"(?s)30 samples.*splits of 50.*--split-size"):
        inception_score(np.ones((30, 4), np.float32), np.ones((4, 3), np.float32), split_size=50)


def test_too_few_points_for_k():
    x = np.random.default_rng(9).standard_normal((10, 4))
    with pytest.raises(ValueError, match=r"3 points.*k = 3"):
        precision_recall(x, x[:3], k=3)
    with pytest.raises(ValueError, match=r"3 points.*k = 3"):
        precision_recall(x[:3], x, k=3)


def test_mismatched_dimensions():
    a = statistics(np.random.default_rng(10).standard_normal((20, 4)))
    b = statistics(np.random.default_rng(11).standard_normal((20, 5)))
    with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match="feature size"):
        precision_recall(np.zeros((10, 4)), np.zeros((10, 5)))


def test_non_finite_features():
    x = np.random.default_rng(12).standard_normal((20, 4))
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        statistics(x)
    with pytest.raises(ValueError, match="non-finite"):
        precision_recall(x, np.zeros((20, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        inception_score(x, np.ones((4, 3)), split_size=10)
    with pytest.raises(ValueError, match="N >= 2|at least 2"):
        statistics(x[:1])
