"""arjax.xla_cpu: the per-function XLA:CPU options apply on CPU, yield to XLA_FLAGS and to a jaxlib that
does not know them, and leave results as plain jit computes them."""
import jax
import jax.numpy as jnp
import numpy as np

from arjax import xla_cpu


def test_options_on_cpu_and_yield_to_user_flags(monkeypatch):
    assert jax.default_backend() == "cpu"
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_cpu.compiler_options() == xla_cpu.INFERENCE
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_cpu.OPTION}=-individual_dot")
    assert xla_cpu.compiler_options() is None


def test_unknown_option_falls_back_to_plain_jit(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_cpu.compiler_options({xla_cpu.OPTION: "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"}) is None


def test_inference_jit_matches_plain_jit_on_a_conv_stack():
    x = jax.random.normal(jax.random.key(0), (2, 24, 24, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1

    def f(x, k):
        for _ in range(3):
            x = jax.nn.silu(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return x.mean(axis=(1, 2))

    want = np.asarray(jax.jit(f)(np.asarray(x, np.float32), k))
    np.testing.assert_allclose(xla_cpu.inference_jit(f)(x, k), want, rtol=1e-5, atol=1e-6)


def test_the_tokenizer_trains_under_them_and_generators_under_xla_defaults(monkeypatch):
    from arjax.config import load_config
    from arjax.train.generator_tasks import GeneratorTask
    from arjax.train.tasks import TokenizerTask
    from conftest import REPO
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    task = TokenizerTask(load_config(f"{REPO}/configs/quickstart.py:tokenizer"))
    assert task.compiler_options() == xla_cpu.INFERENCE  # what the trainer's jitted step compiles with
    assert GeneratorTask.compiler_options(None) is None
