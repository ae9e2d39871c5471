"""Run in a fresh process with 4 fake CPU devices (tests/test_splash.py): a VAR loss and its gradients with
each block-sparse kernel under a (data=2, fsdp=1, tensor=2) mesh, state and batch sharded as the trainer
shards them, equal to the XLA path on one device; and the kernel really runs under shard_map with
per-device blocks of the batch and heads (no gathered q/k/v)."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax import parallel
from arjax.nn.init import create
from arjax.nn.models.var import VAR, VARConfig
from arjax.train.losses import token_cross_entropy


def main(impl: str, data: int, tensor: int) -> None:
    assert jax.device_count() == data * tensor
    pns = (1, 2, 3, 4, 6)
    cfgs = {i: VARConfig(depth=2, embed_dim=128, num_heads=4, vocab_size=32, cvae=8, patch_nums=pns, num_classes=5,
                         init_adaln_gamma=0.5, init_head=1.0, attn_impl=i) for i in ("xla", impl)}
    length, batch = sum(p * p for p in pns), 4
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=batch).astype(np.int32)
    x_in = rng.normal(size=(batch, length - 1, 8)).astype(np.float32)
    tokens = rng.integers(0, 32, size=(batch, length)).astype(np.int32)
    params = nnx.to_pure_dict(nnx.state(create(VAR, cfgs["xla"], 0), nnx.Param))

    def loss(p, labels, x_in, tokens, impl):
        model = nnx.merge(nnx.split(create(VAR, cfgs[impl], 0))[0], p)
        return jnp.mean(token_cross_entropy(model(labels, x_in), tokens))

    with jax.default_matmul_precision("highest"):
        want = jax.jit(jax.value_and_grad(loss), static_argnums=4)(params, labels, x_in, tokens, "xla")
        mesh = parallel.make_mesh({"data": data, "fsdp": 1, "tensor": tensor})
        p_sh = parallel.tree_shardings(params, mesh)
        b_sh = parallel.batch_sharding(mesh)
        step = jax.jit(jax.value_and_grad(loss), static_argnums=4, in_shardings=(p_sh, b_sh, b_sh, b_sh))
        with jax.set_mesh(mesh):
            args = (jax.device_put(params, p_sh), *(jax.device_put(x, b_sh) for x in (labels, x_in, tokens)))
            jaxpr = str(jax.make_jaxpr(step, static_argnums=4)(*args, impl))
            got = step(*args, impl)
    # one shard_map per block, each on (batch / data, L, heads / tensor, D) blocks of q, k and v
    per_device = f"[{batch // data},{length},{4 // tensor},32]"
    assert jaxpr.count("shard_map") >= 2 and per_device in jaxpr.replace(" ", ""), jaxpr[:2000]
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("ok", impl, float(got[0]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
