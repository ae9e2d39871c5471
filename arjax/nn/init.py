"""Initialisers that reproduce PyTorch's distributions (not values), so from-scratch training
starts where the reference recipe starts."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def torch_default_kernel():
    """nn.Linear / nn.Conv2d default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_trunc_normal(std: float, bound: float = 2.0):
    """`nn.init.trunc_normal_(std=std)`: the cut is at +-2 in absolute units, not +-2 std."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)

    return init
