"""Gradient accumulation (`accum_steps`): k microbatches scanned give the loss, metrics and gradients of
one pass over the whole batch (a mean loss), checked against float64 NumPy;
and it refuses what it cannot do."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.train.trainer import accumulated_grads


def _loss(params, extra, consts, batch, key, step, phase):
    """Mean squared error of a linear model; the key is unused, so the microbatches cannot differ by it."""
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    loss = jnp.mean(err ** 2)
    return loss, ({"loss": loss, "mae": jnp.mean(jnp.abs(err))}, {})


def _inputs(rows=24, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=(3,)))}
    batch = {"x": jnp.asarray(rng.normal(size=(rows, 5))), "y": jnp.asarray(rng.normal(size=(rows, 3)))}
    return params, batch


@pytest.mark.parametrize("k", [2, 3, 4])
def test_microbatches_give_the_whole_batch_gradient(k):
    params, batch = _inputs()
    args = ({}, {}, batch, jax.random.key(0), 0, None)
    with jax.default_matmul_precision("highest"):
        (l1, (m1, _)), g1 = accumulated_grads(_loss, 1)(params, *args)
        (lk, (mk, aux)), gk = jax.jit(accumulated_grads(_loss, k))(params, *args)
    # float64 NumPy: d/dw mean(err^2) = 2 x^T err / (rows * 3)
    x, y = np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)
    err = x @ np.asarray(params["w"]) + np.asarray(params["b"]) - y
    np.testing.assert_allclose(np.asarray(gk["w"]), 2 * x.T @ err / err.size, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gk["b"]), 2 * err.sum(0) / err.size, rtol=1e-5)
    np.testing.assert_allclose(float(lk), float(l1), rtol=1e-6)
    np.testing.assert_allclose(float(mk["mae"]), np.abs(err).mean(), rtol=1e-5)
    assert aux == {}


def test_refuses_an_indivisible_batch_and_per_example_aux():
    params, batch = _inputs(rows=10)
    with pytest.raises(ValueError, match="accum_steps=4 must divide the batch"):
        accumulated_grads(_loss, 4)(params, {}, {}, batch, jax.random.key(0), 0, None)

    def with_aux(*a):
        loss, (m, _) = _loss(*a)
        return loss, (m, {"fake": a[3]["x"]})
    with pytest.raises(ValueError, match="tokenizer"):
        accumulated_grads(with_aux, 2)(params, {}, {}, batch, jax.random.key(0), 0, None)
