"""Ahead-of-time compilation for a real TPU topology (libtpu, no TPU needed): the sharded VAR train step
with the splash kernel, for v5e:2x2 on meshes (data, fsdp, tensor) = (4, 1, 1) and (2, 1, 2). The compiled
HLO must hold the kernel's Mosaic custom calls (forward, dQ, dK/dV) and no (L x L) buffer; the dense
XLA step compiled the same way must hold one, which shows the check can fail.

Skips when libtpu is absent (`pip install -e ".[tpu]"`; .ci/run installs it)."""
import re

import jax
import pytest

pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs libtpu: pip install -e '.[tpu]'")

L = 680  # VAR's 256 px schedule (the released tokenizer layout `arjax plan` assumes without a checkpoint)


def _compile(impl: str, mesh: tuple[int, int, int]):
    from arjax import plan
    from arjax.config import load_config
    from conftest import REPO
    cfg = load_config(f"{REPO}/configs/quickstart.py:var", [
        "tokenizer_dir=/nonexistent", "model.depth=2", "model.embed_dim=128", "model.num_heads=2",
        "model.embed_kernel=1", "batch_size=8", "data.cache_tokens=True", "model.dtype=bfloat16",
        f"model.attn_impl={impl}", f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}"])
    # conftest sets "highest" matmul precision (float32 parity tests); Mosaic rejects bf16 matmuls at that
    # precision ("Bad lhs type"), and a bf16 train step runs at the default precision on a TPU anyway
    with jax.default_matmul_precision("default"):
        return plan.plan(cfg, plan.topology_devices("v5e:2x2"), keep_compiled=True)


def _square_buffers(hlo: str) -> list[str]:
    """HLO array shapes with two sequence-length dimensions (padded to the kernel's 128 blocks or not)."""
    return sorted(set(re.findall(rf"\[[\d,]*\b(?:{L}|768),(?:{L}|768)\b[\d,]*\]", hlo)))


@pytest.mark.parametrize("mesh", [(4, 1, 1), (2, 1, 2)])
def test_sharded_var_step_compiles_with_the_splash_kernel_and_no_quadratic_buffer(mesh):
    p = _compile("splash", mesh)
    hlo = p.compiled.as_text()
    assert p.device_kind.startswith("TPU v5"), p.device_kind
    for kernel in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):
        assert kernel in hlo, f"{kernel} missing from the compiled step"
    assert "tpu_custom_call" in hlo
    assert _square_buffers(hlo) == [], _square_buffers(hlo)[:5]
    assert p.fits and p.temp_bytes > 0


@pytest.mark.slow  # the control: ~1 min more for the dense step
def test_the_dense_step_has_the_quadratic_buffer_the_check_looks_for():
    p = _compile("xla", (4, 1, 1))
    assert _square_buffers(p.compiled.as_text()), "the dense step should hold (L x L) scores"
