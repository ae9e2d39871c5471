"""XLA:CPU compile options for the convolution- and sampling-heavy functions (tokenizer, sampler).

jaxlib 0.10's XLA:CPU hands dots, convolutions, elementwise fusions and reductions to YNNPACK. For the
VAR tokenizer's 3x3 convolutions (32 channels at 256 px) YNNPACK's convolution runs at half the speed
of XLA's own (52 vs 106-112 GFLOP/s), and the sampler's filters and GroupNorm reductions ran faster without its
elementwise and reduction fusions. With YNNPACK for single dots only, measured 2026-12-03 on a 2-core
AMD EPYC, VAR-d4, batch 8, 256 px: decode 2283 -> ~1130-1190 ms, sampling with decode 4630 -> ~2690-2820
ms (other sets: benchmarks/RESULTS.md). The tokenizer's training step takes them too (TokenizerTask.
compiler_options; the quickstart tokenizer at batch 16: 479 -> 280 ms per step, 2026-12-08). The transformer's
training step keeps the default: without YNNPACK's elementwise and reduction fusions it was 40-50% slower
(2.1 -> 3.0-3.2 s), so these options are per function (`jax.jit(compiler_options=...)`), not process-wide
XLA_FLAGS.

Applied only on the CPU backend, only when the user's XLA_FLAGS do not choose YNNPACK's fusions
themselves, and only if this jaxlib accepts the option (a probe compile, once); otherwise plain jit.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

OPTION = "xla_cpu_experimental_ynn_fusion_type"
# YNNPACK for single dots only: XLA's own emitters for convolutions, elementwise fusions and reductions
INFERENCE = {OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _accepted(options: tuple) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(2)).compile()
        return True
    except Exception:  # an option this jaxlib does not know: compile as usual
        return False


def compiler_options(options: dict = INFERENCE) -> dict | None:
    """`options` where they apply (CPU backend, not overridden by XLA_FLAGS, known to jaxlib), else None."""
    if jax.default_backend() != "cpu" or OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    return options if _accepted(tuple(sorted(options.items()))) else None


def inference_jit(fn, **jit_kwargs):
    """jax.jit with the inference compile options (see the module docstring)."""
    return jax.jit(fn, compiler_options=compiler_options(), **jit_kwargs)
