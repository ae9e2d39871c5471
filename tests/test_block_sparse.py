"""The Pallas block-sparse attention against a float64 NumPy reference: forward and gradients, over VAR and
custom schedules, lengths off the block size, head counts and dims, fp32 and bf16; its block tables; and a
VAR training step that is the same with impl="pallas" and impl="xla".

On CPU the kernels run interpreted; elsewhere the same tests compile them (all passed compiled on an H100,
2026-11-24; never tried on a TPU), with float32 matmuls at "highest" precision (a GPU's default is TF32,
~1e-3 relative, which the float32 tolerances would reject)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.ops import scales
from arjax.ops.attention import attention
from arjax.ops.block_sparse import block_sparse_attention, block_tables, check_triton_shapes, token_levels
from attention_reference import check_kernel

INTERPRET = jax.default_backend() == "cpu"  # compiled wherever Pallas has a backend


def _check(lens, mask, heads, dim, dtype, tol, seed, block=64):
    def run(q, k, v, scale):
        return block_sparse_attention(q, k, v, scale_lens=lens, mask=mask, scale=scale, block_q=block, block_k=block,
                                      interpret=INTERPRET)
    check_kernel(run, lens, mask, heads, dim, dtype, tol, seed)


SCHEDULES = {  # tokens per scale
    "var256": scales.scale_lens(scales.VAR_SCHEDULES[256]),  # 680 tokens, not a multiple of 64
    "flexvar": scales.scale_lens((1, 2, 3, 5, 8, 13)),       # a custom schedule, 272 tokens
    "odd": scales.scale_lens((1, 3, 7)),                     # 59 tokens: one partial block
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("mask", ["block_causal", "block_diagonal"])
def test_float32_forward_and_gradients_match_float64(name, mask):
    _check(SCHEDULES[name], mask, heads=2, dim=16, dtype=jnp.float32, tol=1e-5, seed=hash((name, mask)) % 1000)


@pytest.mark.parametrize("heads,dim", [pytest.param(1, 8, marks=pytest.mark.slow), (4, 32), (3, 64)])
def test_head_counts_and_dims(heads, dim):
    _check(scales.scale_lens((1, 2, 3, 4, 6, 8)), "block_causal", heads=heads, dim=dim, dtype=jnp.float32, tol=1e-5, seed=heads * dim,
           block=32)


@pytest.mark.parametrize("mask", ["causal", "none"])
def test_causal_and_unmasked(mask):
    _check((45,), mask, heads=2, dim=16, dtype=jnp.float32, tol=1e-5, seed=7, block=16)


def test_bfloat16_within_two_percent():
    _check(scales.scale_lens((1, 2, 3, 4, 5, 6, 8, 10)), "block_causal", heads=2, dim=32, dtype=jnp.bfloat16, tol=2e-2, seed=11)


LARGE = {512: scales.VAR_SCHEDULES[512], 1024: scales.LONG_SCHEDULE_1024}  # 1024: 9451 tokens


@pytest.mark.slow
@pytest.mark.parametrize("res", sorted(LARGE))
def test_large_schedules(res):
    _check(scales.scale_lens(LARGE[res]), "block_causal", heads=1, dim=16, dtype=jnp.float32, tol=1e-5, seed=res,
           block=128)


def test_block_tables_skip_empty_blocks_cover_every_allowed_pair_and_flag_partial_blocks():
    lens = scales.scale_lens(scales.VAR_SCHEDULES[256])
    for diagonal in (False, True):
        lvl = token_levels("block_diagonal" if diagonal else "block_causal", lens, 680)
        q_lvl = np.concatenate([lvl, np.full(24, -2)])
        k_lvl = np.concatenate([lvl, np.full(24, 2 ** 30)])
        kv_lo, kv_hi, q_lo, q_hi, partial = block_tables(q_lvl, k_lvl, 64, 64, diagonal)
        allowed = (k_lvl[None] == q_lvl[:, None]) if diagonal else (k_lvl[None] <= q_lvl[:, None])
        tiles = allowed.reshape(11, 64, 11, 64)
        useful = tiles.any(axis=(1, 3))  # blocks holding an allowed pair
        # the mask is applied exactly on the blocks it cuts through; full blocks run without it
        np.testing.assert_array_equal(partial.astype(bool), useful & ~tiles.all(axis=(1, 3)))
        assert (useful & ~partial.astype(bool)).any()
        for lo, hi, blocks in ((kv_lo, kv_hi, useful), (q_lo, q_hi, useful.T)):
            visited = np.zeros_like(blocks)
            for row in range(len(lo)):
                visited[row, lo[row]:hi[row]] = True
            np.testing.assert_array_equal(visited, blocks)  # all allowed pairs, and no empty block, visited
        assert not useful.all()  # (70% of the blocks at 256 px block-causal, 40% block-diagonal)


def test_entry_point_dispatches_and_kv_cached_steps_stay_dense():
    rng = np.random.default_rng(3)
    lens = (1, 4, 9)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 14, 2, 8)), jnp.float32) for _ in range(3))
    with jax.default_matmul_precision("highest"):
        dense = attention(q, k, v, scale_lens=lens, impl="xla")
        pallas = attention(q, k, v, scale_lens=lens, impl="pallas")
    np.testing.assert_allclose(np.asarray(pallas), np.asarray(dense),
                               rtol=1e-5, atol=1e-6)
    # a KV-cached step: 9 queries against 14 keys, no mask: the dense path
    got = attention(q[:, 5:], k, v, mask="none", impl="pallas")
    np.testing.assert_allclose(np.asarray(got), np.asarray(attention(q[:, 5:], k, v, mask="none", impl="xla")),
                               rtol=1e-6)


@pytest.mark.slow  # ~20 s per kernel; the kernels' gradients against float64 stay in the fast suite
@pytest.mark.parametrize("impl", ["pallas", "splash"])
def test_var_training_step_is_the_same_with_a_kernel_and_xla(impl):
    from flax import nnx

    from arjax.nn.init import create
    from arjax.nn.models.var import VAR, VARConfig
    from arjax.train.losses import token_cross_entropy
    pns = (1, 2, 3, 4, 6)
    cfgs = {i: VARConfig(depth=2, embed_dim=128, num_heads=2, vocab_size=32, cvae=8, patch_nums=pns, num_classes=5,
                         init_adaln_gamma=0.5, init_head=1.0, attn_impl=i) for i in ("xla", impl)}
    rng = np.random.default_rng(5)
    length = sum(p * p for p in pns)
    labels = jnp.asarray(rng.integers(0, 5, size=3))
    x_in = jnp.asarray(rng.normal(size=(3, length - 1, 8)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 32, size=(3, length)))
    params = nnx.to_pure_dict(nnx.state(create(VAR, cfgs["xla"], 0), nnx.Param))

    def loss(p, impl):
        model = nnx.merge(nnx.split(create(VAR, cfgs[impl], 0))[0], p)
        return jnp.mean(token_cross_entropy(model(labels, x_in), tokens))

    with jax.default_matmul_precision("highest"):
        (lx, gx), (lk, gk) = (jax.value_and_grad(loss)(params, i) for i in ("xla", impl))
    np.testing.assert_allclose(float(lk), float(lx), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(gk), jax.tree.leaves(gx)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_gpu_shape_rule_names_the_offending_size():
    check_triton_shapes(64, 64, 32)  # VAR's head dim and the default blocks pass
    with pytest.raises(ValueError, match="power-of-two head dim.*got 48"):
        check_triton_shapes(48, 64, 64)
    with pytest.raises(ValueError, match="power-of-two block_k.*got 96"):
        check_triton_shapes(64, 64, 96)


def test_cpu_scale_groups_equal_the_masked_dense_attention():
    """CPU's block-causal path (dense attention per group of scales over its key prefix) against the masked
    dense softmax in float64 NumPy, forward and input gradients, on VAR's 256 px schedule."""
    from arjax.ops.attention import scale_group_attention, scale_groups
    lens = scales.scale_lens((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert scale_groups(lens) == [(1, 4, 9, 16, 25, 36), (64,), (100,), (169,), (256,)]
    rng = np.random.default_rng(7)
    q, k, v, g = (rng.standard_normal((2, sum(lens), 2, 16)) for _ in range(4))
    mask = scales.block_causal_mask(lens)

    def ref(q, k, v):
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)

    f32 = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    attn = jax.jit(lambda *a: scale_group_attention(*a, lens))  # jitted: eager, each op compiles on its own
    np.testing.assert_allclose(np.asarray(attn(*f32)), ref(q, k, v), atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(attn(*a) * jnp.asarray(g, jnp.float32)), argnums=(0, 1, 2)))(*f32)
    eps = 1e-6  # central differences of the float64 reference along one random direction per input
    for i, got in enumerate(grads):
        d = rng.standard_normal(q.shape)
        args_p = [a + eps * d if j == i else a for j, a in enumerate((q, k, v))]
        args_m = [a - eps * d if j == i else a for j, a in enumerate((q, k, v))]
        want = (np.sum(ref(*args_p) * g) - np.sum(ref(*args_m) * g)) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(np.asarray(got, np.float64) * d)), want, rtol=1e-4)
