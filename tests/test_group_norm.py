"""arjax.nn.group_norm.GroupNorm against float64 NumPy (forward) and nnx.GroupNorm (gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.nn.group_norm import GroupNorm


def numpy_group_norm(x, groups, scale, bias, eps):
    x = np.asarray(x, np.float64)
    b, c = x.shape[0], x.shape[-1]
    xg = x.reshape(b, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)  # biased, as torch.nn.GroupNorm
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _module(c, groups, seed=0):
    gn = GroupNorm(c, num_groups=groups, epsilon=1e-6, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(seed)
    gn.scale[...] = jnp.asarray(rng.normal(1.0, 0.3, c), jnp.float32)
    gn.bias[...] = jnp.asarray(rng.normal(0.0, 0.3, c), jnp.float32)
    return gn


@pytest.mark.parametrize("shape,groups", [((2, 5, 7, 64), 32), ((3, 16, 16, 32), 32), ((2, 9, 96), 8)])
def test_matches_float64_numpy(shape, groups):
    gn = _module(shape[-1], groups)
    # an offset much larger than the spread: the centred (two-pass) variance keeps its precision there
    x = np.random.default_rng(1).normal(3.0, 0.05, shape).astype(np.float32)
    want = numpy_group_norm(x, groups, np.asarray(gn.scale[...]), np.asarray(gn.bias[...]), 1e-6)
    np.testing.assert_allclose(np.asarray(gn(jnp.asarray(x))), want, rtol=0, atol=2e-4)


def test_bfloat16_in_bfloat16_out_with_float32_statistics():
    gn = _module(32, 32)
    x = np.random.default_rng(2).normal(0.0, 2.0, (2, 8, 8, 32)).astype(np.float32)
    y = gn(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    want = numpy_group_norm(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), 32, np.asarray(gn.scale[...]),
                            np.asarray(gn.bias[...]), 1e-6)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=0, atol=0.05)


def test_gradients_match_nnx_group_norm():
    ours = _module(64, 32)
    theirs = nnx.GroupNorm(64, num_groups=32, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
    theirs.scale[...], theirs.bias[...] = ours.scale[...], ours.bias[...]
    x = jnp.asarray(np.random.default_rng(3).normal(0.5, 1.5, (2, 6, 6, 64)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)

    def grads(module):
        def loss(m, x):
            return (jnp.tanh(m(x)) * w).sum()
        return nnx.grad(loss, argnums=(0, 1))(module, x)

    (g_ours, gx_ours), (g_theirs, gx_theirs) = grads(ours), grads(theirs)
    np.testing.assert_allclose(gx_ours, gx_theirs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_ours.scale[...], g_theirs.scale[...], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_ours.bias[...], g_theirs.bias[...], rtol=1e-4, atol=1e-5)


def test_channels_not_divisible_by_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="48 channels do not split into 32 groups"):
        GroupNorm(48, num_groups=32)
