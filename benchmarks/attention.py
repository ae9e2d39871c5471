"""Attention under scale-structured masks: dense XLA (explicit mask), the Pallas block-sparse kernel, and
`jax.nn.dot_product_attention` (cuDNN where the backend has it), forward and forward+backward.

    python benchmarks/attention.py                                  # GPU/TPU: d16 and d30 heads, 256/512/1024 px
    python benchmarks/attention.py --res 256 --batch 1 --impls xla  # a CPU smoke run

For each (model heads, resolution, mask, impl, pass) it prints the median time over --steps calls, the
compiled executable's memory (XLA memory analysis: arguments + outputs + temporaries) and TFLOP/s
counting only the unmasked work (2 matmuls of 2 * allowed_pairs * D flops each forward; forward+backward
counts 3x that: 4 backward matmuls, recomputation not counted). On CPU the Pallas kernel runs
interpreted: its times there mean nothing, so it is skipped unless --impls names it.
"""
from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

from arjax.ops import scales
from arjax.ops.attention import build_mask, dense_attention
from arjax.ops.block_sparse import block_sparse_attention

HEADS = {"d16": (16, 64), "d30": (30, 64)}  # (heads, head dim) of VAR-d16 / d30
SCHEDULES = {**scales.VAR_SCHEDULES, 1024: scales.LONG_SCHEDULE_1024}


def make_fn(impl: str, lens, mask: str):
    length = sum(lens)
    dense_mask = jnp.asarray(build_mask(mask, lens, length, length))
    if impl == "xla":
        return lambda q, k, v: dense_attention(q, k, v, dense_mask)
    if impl == "pallas":
        interpret = jax.default_backend() == "cpu"
        return lambda q, k, v: block_sparse_attention(q, k, v, scale_lens=lens, mask=mask, interpret=interpret)
    if impl == "cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=dense_mask[None, None],
                                                            implementation="cudnn")
    raise ValueError(f"unknown impl {impl!r}")


def timed(fn, args, steps: int):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    mem_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), mem_bytes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["d16", "d30"], choices=sorted(HEADS))
    ap.add_argument("--res", nargs="+", type=int, default=[256, 512, 1024], choices=sorted(SCHEDULES))
    ap.add_argument("--masks", nargs="+", default=["block_causal", "block_diagonal"])
    ap.add_argument("--impls", nargs="+", default=None, help="default: xla pallas cudnn (xla only on CPU)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    impls = args.impls or (["xla"] if jax.default_backend() == "cpu" else ["xla", "pallas", "cudnn"])
    dev = jax.devices()[0]
    print(f"# attention benchmark, {datetime.date.today()}, {dev.platform} {dev.device_kind}, batch {args.batch}, "
          f"{args.dtype}, jax {jax.__version__}")
    print("| heads | px | tokens | mask | impl | pass | ms | memory MiB | TFLOP/s (unmasked work) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for model in args.models:
        h, d = HEADS[model]
        for res in args.res:
            lens = scales.scale_lens(SCHEDULES[res])
            length = sum(lens)
            q, k, v = (jnp.asarray(rng.normal(size=(args.batch, length, h, d)), args.dtype) for _ in range(3))
            for mask in args.masks:
                pairs = int(build_mask(mask, lens, length, length).sum())
                fwd_flops = 4 * pairs * d * h * args.batch
                for impl in impls:
                    fn = make_fn(impl, lens, mask)
                    loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v).astype(jnp.float32))
                    passes = {"fwd": (fn, fwd_flops), "fwd+bwd": (jax.grad(loss, argnums=(0, 1, 2)), 3 * fwd_flops)}
                    for name, (f, flops) in passes.items():
                        try:
                            sec, mem = timed(f, (q, k, v), args.steps)
                            row = f"{sec * 1e3:.2f} | {mem / 2**20:.0f} | {flops / sec / 1e12:.3f}"
                        except Exception as e:  # e.g. cuDNN without support for this mask or backend
                            row = f"n/a ({type(e).__name__}) | | "
                        print(f"| {h}x{d} | {res} | {length} | {mask} | {impl} | {name} | {row} |", flush=True)


if __name__ == "__main__":
    main()
