"""The training losses and metrics (arjax.train.losses) against float64 NumPy."""
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_token_cross_entropy_value_and_gradient_vs_float64(ls):
    """Loss and d(sum of weighted losses)/d logits against float64 NumPy (torch's label-smoothing
    definition; gradient = w (softmax - target distribution))."""
    import jax
    from arjax.train.losses import token_cross_entropy
    rng = np.random.default_rng(1)
    b, length, v = 2, 5, 11
    logits = rng.normal(0, 3, (b, length, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, length))
    w = rng.random((b, length)).astype(np.float32)
    lg = logits.astype(np.float64)
    logp = lg - lg.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    dist = (1 - ls) * np.eye(v)[targets] + ls / v
    want = -(dist * logp).sum(-1)
    want_grad = w[..., None] * (np.exp(logp) - dist)
    loss_fn = lambda x: jnp.sum(token_cross_entropy(x, jnp.asarray(targets), ls) * w)  # noqa: E731
    np.testing.assert_allclose(token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), ls), want, rtol=2e-6,
                               atol=2e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(loss_fn))(jnp.asarray(logits)), want_grad, rtol=1e-5, atol=1e-6)
    g16 = jax.grad(loss_fn)(jnp.asarray(logits, jnp.bfloat16))  # the gradient comes back in the logits' dtype
    assert g16.dtype == jnp.bfloat16
