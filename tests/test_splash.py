"""The TPU kernel (splash attention on scale masks, `arjax.ops.splash`) against a float64 NumPy reference:
forward and dQ/dK/dV on the 256 and 512 px VAR schedules, a FlexVAR-style schedule and lengths off the
128-row block, block-causal and block-diagonal, fp32 and bf16; its mask and block counts; the "auto"
choice per platform; and, on a 2 x 2 fake-device mesh under shard_map, a VAR training step equal to the
XLA path's (the one-device step: tests/test_block_sparse.py, for both kernels).

On CPU the kernels run in Pallas's TPU interpret mode; on a TPU the same tests would compile them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.ops import scales
from arjax.ops.attention import attention, resolve_impl
from arjax.ops.splash import blocks_visited, padded_mask, splash_attention
from attention_reference import check_kernel, dense_mask

INTERPRET = jax.default_backend() != "tpu"

SCHEDULES = {
    "var256": scales.scale_lens(scales.VAR_SCHEDULES[256]),  # 680 tokens: 88 padded to 768
    "flexvar": scales.scale_lens((1, 2, 3, 5, 8, 13)),       # a FlexVAR-style custom schedule, 272 tokens
    "odd": scales.scale_lens((1, 3, 7)),                     # 59 tokens: less than one block
}


def _run(lens, mask):
    def run(q, k, v, scale):
        return splash_attention(q, k, v, scale_lens=lens, mask=mask, scale=scale, interpret=INTERPRET)
    return run


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("mask", ["block_causal", "block_diagonal"])
def test_float32_forward_and_gradients_match_float64(name, mask):
    check_kernel(_run(SCHEDULES[name], mask), SCHEDULES[name], mask, heads=2, dim=64, dtype=jnp.float32, tol=1e-5,
                 seed=sum(map(ord, name + mask)))


@pytest.mark.parametrize("mask", ["block_causal", "block_diagonal"])
def test_bfloat16_within_two_percent(mask):
    lens = SCHEDULES["var256"]
    check_kernel(_run(lens, mask), lens, mask, heads=2, dim=64, dtype=jnp.bfloat16, tol=2e-2, seed=11)


@pytest.mark.parametrize("mask", ["causal", "none"])
def test_causal_and_unmasked_off_the_block_size(mask):
    check_kernel(_run((200,), mask), (200,), mask, heads=2, dim=64, dtype=jnp.float32, tol=1e-5, seed=7)


@pytest.mark.parametrize("mask", ["block_causal", "block_diagonal"])
def test_512px_schedule(mask):
    lens = scales.scale_lens(scales.VAR_SCHEDULES[512])
    check_kernel(_run(lens, mask), lens, mask, heads=1, dim=64, dtype=jnp.float32, tol=1e-5, seed=512, batch=1)


def test_padded_mask_keeps_the_real_mask_and_no_empty_row():
    lens = SCHEDULES["var256"]
    for mask in ("block_causal", "block_diagonal"):
        m = padded_mask(mask, lens, 680)
        assert m.shape == (768, 768)
        np.testing.assert_array_equal(m[:680, :680], dense_mask(mask, lens, 680))
        assert not m[:680, 680:].any()  # no real query sees a padded key
        assert m.any(axis=1).all()      # every softmax row has a key (padded rows see all)
    # the 128 x 128 blocks the kernel computes: those holding an allowed pair (padded query rows see all)
    m = padded_mask("block_causal", lens, 680)
    want = sum(bool(m[i:i + 128, j:j + 128].any()) for i in range(0, 768, 128) for j in range(0, 768, 128))
    assert blocks_visited(m) == (want, 36) and want < 36


def test_auto_picks_the_kernel_of_the_target_platform():
    kw = dict(q_len=680, k_len=680, head_dim=64)
    assert resolve_impl("auto", "tpu", **kw) == "splash"
    assert resolve_impl("auto", "gpu", **kw) == "pallas"
    assert resolve_impl("auto", "cpu", **kw) == "xla"
    assert resolve_impl("auto", "gpu", q_len=680, k_len=680, head_dim=48) == "xla"  # Triton: powers of two
    assert resolve_impl("splash", "tpu", q_len=16, k_len=680, head_dim=64) == "xla"  # KV-cached step
    q = jnp.zeros((1, 14, 2, 8))
    if jax.default_backend() == "cpu":  # a kernel of another platform is refused by name, not by Mosaic/Triton
        attention(q, q, q, scale_lens=(1, 4, 9), impl="splash")  # CPU interprets either
    else:
        other = {"gpu": "splash", "tpu": "pallas"}[jax.default_backend()]
        with pytest.raises(ValueError, match=f"impl='{other}' is the"):
            attention(q, q, q, scale_lens=(1, 4, 9), impl=other)


@pytest.mark.parametrize("impl", ["splash", pytest.param("pallas", marks=pytest.mark.slow)])
def test_kernels_under_shard_map_on_a_2x2_mesh_match_one_device_xla(impl):
    """4 fake devices, mesh data=2 x tensor=2: loss and gradients of a VAR with the kernel under shard_map
    (per device: half the batch, half the heads) equal the XLA path's on one device."""
    import subprocess
    import sys

    from conftest import REPO, worker_env
    r = subprocess.run([sys.executable, str(REPO / "tests" / "attention_mesh_worker.py"), impl, "2", "2"],
                       env=worker_env(4), capture_output=True, text=True, timeout=600, cwd=REPO / "tests")
    assert r.returncode == 0 and f"ok {impl}" in r.stdout, r.stderr[-4000:]
