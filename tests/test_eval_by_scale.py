"""Pipeline.complete (sampling around teacher-forced tokens) and the by-scale diagnosis built on it,
checked against the independent paths: plain sampling, the tokenizer's own decode, evaluate_samples."""
import numpy as np
import pytest

from arjax.eval import evaluate_samples, load_classifier
from arjax.eval.by_scale import DIAGNOSIS_SEED, format_scale_table, scale_diagnosis
from arjax.eval.real_data import REFERENCE_SEED, real_images01
from conftest import tiny_builtin_var

PNS = (1, 2, 4)


@pytest.fixture(scope="module")
def pipe():
    return tiny_builtin_var(PNS)


def _tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, 64, (n, sum(p * p for p in PNS))).astype(np.int32)


def test_complete_keeps_known_tokens_and_matches_sample_and_decode_at_the_extremes(pipe):
    tokens, labels = _tokens(4), np.array([0, 3, 5, 9])
    known = np.zeros(tokens.shape, bool)
    known[:, :5] = True  # the first two scales
    known[1, 7] = True  # and one token of the last scale in one sequence
    _, out = pipe.complete(tokens, known, labels, cfg=2.0, seed=3, return_tokens=True)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[known], tokens[known])
    assert (out[~known] != tokens[~known]).any()  # the rest was sampled, not copied

    images = np.asarray(pipe.complete(tokens, np.ones_like(known), labels, cfg=2.0, seed=3))
    decoded = (np.asarray(pipe.tokenizer.decode(tokens)) + 1) / 2
    np.testing.assert_allclose(images, decoded, atol=1e-5)

    free, free_tok = pipe.complete(tokens, np.zeros_like(known), labels, cfg=2.0, seed=3, return_tokens=True)
    plain, plain_tok = pipe.sample(labels, cfg=2.0, seed=3, return_tokens=True)
    np.testing.assert_array_equal(np.asarray(free_tok), np.asarray(plain_tok))
    np.testing.assert_allclose(np.asarray(free), np.asarray(plain), atol=1e-6)


def test_complete_names_bad_arguments(pipe):
    tokens, labels = _tokens(2), np.array([0, 1])
    with pytest.raises(ValueError, match="boolean array shaped like the tokens"):
        pipe.complete(tokens, np.ones((2, 5), bool), labels)
    with pytest.raises(ValueError, match="boolean array"):
        pipe.complete(tokens, np.ones(tokens.shape, np.int32), labels)
    with pytest.raises(ValueError, match="one label per token sequence"):
        pipe.complete(tokens, np.ones(tokens.shape, bool), np.array([0]))
    with pytest.raises(ValueError, match=r"shape \(B, 21\)"):
        pipe.complete(tokens[:, :5], np.ones((2, 5), bool), labels)


@pytest.mark.slow  # ~20 s: four sampling passes and the evaluation classifier (the suite's 15 min budget)
def test_scale_diagnosis_rows_run_from_plain_sampling_to_the_reconstruction(pipe, builtin_classifier_dir):
    clf = load_classifier(builtin_classifier_dir)
    n, kw = 32, dict(seed=2, cfg=1.5, top_k=0, top_p=1.0)
    rows = scale_diagnosis(pipe, clf, count=n, batch_size=16, **kw)
    assert [r["forced_scales"] for r in rows] == [[], [1], [1, 2], [1, 2, 4]]

    x01, labels = real_images01(n, 32, DIAGNOSIS_SEED)
    real, real_labels = real_images01(n, 32, REFERENCE_SEED)
    plain = np.asarray(pipe.sample(labels, batch_size=16, **kw))  # the shapes the diagnosis compiled
    want_first = evaluate_samples(clf, plain, labels, real, real_labels)
    rec = np.clip((np.asarray(pipe.tokenizer.decode(pipe.tokenizer.encode(x01 * 2 - 1))) + 1) / 2, 0, 1)
    want_last = evaluate_samples(clf, rec, labels, real, real_labels)
    for row, want in ((rows[0], want_first), (rows[-1], want_last)):
        assert row["class_accuracy"] == pytest.approx(want["class_accuracy"])
        assert row["frechet_distance"] == pytest.approx(want["frechet_distance"], rel=1e-4)
        assert row["per_class_accuracy"] == pytest.approx(want["per_class_accuracy"])
    table = format_scale_table(rows)
    assert "none (plain sampling)" in table and "1,2,4" in table
