"""The VAR training metrics (arjax.train.losses.var_metrics) against float64 NumPy."""
import jax.numpy as jnp
import numpy as np

from arjax.train.losses import top1_hits, var_metrics


def test_var_metrics_match_numpy():
    rng = np.random.default_rng(0)
    b, length, v, last = 3, 14, 37, 9
    logits = rng.normal(0, 2, (b, length, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, length))
    targets[0, :5] = logits[0, :5].argmax(-1)  # some hits, so the accuracy is not trivially 0
    lg = logits.astype(np.float64)
    logp = lg - lg.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    hit = (lg.argmax(-1) == targets) * 100.0
    got = var_metrics(jnp.asarray(logits), jnp.asarray(targets), last)
    np.testing.assert_allclose(got["loss_mean"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["loss_tail"], ce[:, -last:].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["acc_mean"], hit.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["acc_tail"], hit[:, -last:].mean(), rtol=1e-6)
    assert 0 < got["acc_mean"] < 100


def test_top1_hits_counts_any_of_tied_maxima():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 0.0], [2.0, 1.0, 0.0, -1.0]])
    np.testing.assert_array_equal(top1_hits(logits, jnp.asarray([2, 1])), [True, False])
    np.testing.assert_array_equal(top1_hits(logits, jnp.asarray([1, 0])), [True, True])
