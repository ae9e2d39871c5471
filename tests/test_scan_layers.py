"""`model.scan_layers`: the blocks as one lax.scan over stacked parameters give the unrolled loop's
logits and gradients (VAR with shared and per-block AdaLN, HMAR's two branches), with and without remat."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.nn.init import create
from arjax.nn.models.hmar import HMAR, HMARConfig
from arjax.nn.models.var import VAR, VARConfig

PNS = (1, 2, 3)


def _loss_and_grads(cls, cfg, seed=0):
    model = create(cls, cfg, seed)
    graphdef, params = nnx.split(model, nnx.Param)
    labels = jnp.array([1, 3])
    x_in = jax.random.normal(jax.random.key(1), (2, sum(p * p for p in PNS) - 1, cfg.cvae))

    def loss(params):
        logits = nnx.merge(graphdef, params)(labels, x_in)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

    # jitted: run eagerly, every op would compile on its own (this file took ~3 min that way)
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads, jax.make_jaxpr(loss)(params)


SLOW = pytest.mark.slow  # ~10 s each on 2 busy cores: the default suite covers each factor once (15 min budget)


@pytest.mark.parametrize("cls,extra,remat", [
    pytest.param(VAR, {}, False, id="plain-var"),
    pytest.param(VAR, {}, True, id="remat-var", marks=SLOW),
    pytest.param(VAR, {"shared_aln": True}, False, id="plain-var-shared-aln", marks=SLOW),
    pytest.param(VAR, {"shared_aln": True}, True, id="remat-var-shared-aln"),
    pytest.param(HMAR, {"mask_blocks": 1}, False, id="plain-hmar"),
    pytest.param(HMAR, {"mask_blocks": 1}, True, id="remat-hmar")])
def test_scan_equals_unrolled(cls, extra, remat):
    config_cls = HMARConfig if cls is HMAR else VARConfig
    base = config_cls(depth=3, embed_dim=32, num_heads=2, vocab_size=24, cvae=4, num_classes=5, patch_nums=PNS,
                      remat=remat, **extra)
    v0, l0, g0, jaxpr0 = _loss_and_grads(cls, base)
    v1, l1, g1, jaxpr1 = _loss_and_grads(cls, dataclasses.replace(base, scan_layers=True))
    assert "scan" in str(jaxpr1) and "scan" not in str(jaxpr0)  # the switch changes the program
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(l1, l0, atol=1e-5)
    flat0, flat1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert len(flat0) == len(flat1)
    for a, b in zip(flat0, flat1):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)
