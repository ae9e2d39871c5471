"""`create` inside a trace builds the module in that trace: planning (eval_shape) allocates nothing and
the trainer's jitted init gives the same parameters as eager creation."""
import jax
import numpy as np
from flax import nnx

from arjax.nn.init import create
from arjax.nn.models.var import VAR, VARConfig

CFG = VARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=16, cvae=4, num_classes=3, patch_nums=(1, 2))


def _params(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_create_under_eval_shape_compiles_nothing(monkeypatch):
    compiled = []
    real = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: compiled.append(1) or real(self, *a, **k))
    shapes = jax.eval_shape(lambda: _params(create(VAR, CFG, 0)))
    assert not compiled  # nothing ran: only shapes
    assert shapes["head"]["kernel"].shape == (32, 16)


def test_create_under_jit_equals_eager():
    eager = _params(create(VAR, CFG, 3))
    traced = jax.jit(lambda: _params(create(VAR, CFG, 3)))()
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
        # eager creation compiles without CPU backend optimisation: equal up to the last bit of rounding
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
