"""Benchmark the VAR transformer's teacher-forced forward+backward and the full CFG sampler.

Runs on whatever device JAX picks (CPU, GPU or TPU) with randomly initialised models built through
`arjax.build`, so no checkpoint is needed:

    python benchmarks/var_bench.py --depth 2 --tokenizer-ch 32 --batch 4          # CPU smoke run
    python benchmarks/var_bench.py --depth 16 --batch 8                           # VAR-d16, released tokenizer
    python benchmarks/var_bench.py --depth 30 --batch 16 --dtype bfloat16 --image-size 512

Two phases:

* train: loss = mean token cross-entropy of `VAR(labels, var_input)` against random targets, and its
  gradient with respect to every `nnx.Param`, as one jitted pure function of the split state
  (`nnx.split` outside, `nnx.merge` inside). No optimizer update is included.
* sample: `Pipeline.sample(labels, cfg=1.5, top_k=900, top_p=0.96)`, i.e. all scales of the
  transformer with a KV cache (conditional and unconditional rows as one batch of 2B) followed by the
  tokenizer's decoder.

Compile time is measured separately (ahead-of-time `lower().compile()`), then `--warmup` untimed
calls run, then `--steps` calls are timed, each ended with `block_until_ready`. Peak memory is the
device allocator's `peak_bytes_in_use` on GPU/TPU (process-wide, so a later phase includes earlier
ones; use --skip-train / --skip-sample to isolate one); on CPU it is the compiled executable's
`memory_analysis()` (arguments + outputs + temporaries) and the process's max RSS so far.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import arjax
from arjax.nn.models.var import VARConfig
from arjax.nn.tokenizers.msvq import VQVAEConfig
from arjax.ops.scales import VAR_SCHEDULES

GiB = 1024 ** 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=16, help="VAR depth; width = 64*depth, heads = depth (default 16)")
    p.add_argument("--tokenizer-ch", type=int, default=160,
                   help="VQVAE base channels (160 = released vae_ch160v4096z32; must be a multiple of 32)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per phase (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (default 1)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype of the transformer blocks (VARConfig.dtype); params stay float32")
    p.add_argument("--attn", choices=("auto", "xla", "pallas"), default="auto",
                   help="attention implementation (VARConfig.attn_impl; pallas = the block-sparse kernel)")
    p.add_argument("--remat", action="store_true", help="recompute blocks in the backward pass (VARConfig.remat)")
    p.add_argument("--image-size", type=int, choices=sorted(VAR_SCHEDULES), default=256,
                   help="selects patch_nums from arjax.ops.scales.VAR_SCHEDULES (default 256)")
    p.add_argument("--precision", choices=("default", "high", "highest"), default="highest",
                   help="jax default_matmul_precision for both phases (arjax.Pipeline's default is "
                        "'highest'; 'default' allows TF32 on NVIDIA GPUs)")
    p.add_argument("--skip-train", action="store_true", help="do not time the forward+backward")
    p.add_argument("--skip-sample", action="store_true", help="do not time the sampler")
    p.add_argument("--compile-only", action="store_true",
                   help="compile and report the executables' memory needs without running them "
                        "(to size a batch before it runs out of memory)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.tokenizer_ch % 32:
        p.error(f"--tokenizer-ch must be a multiple of 32 (GroupNorm has 32 groups); got {a.tokenizer_ch}")
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--batch and --steps must be >= 1 and --warmup >= 0")
    return a


def make_meta(args) -> dict:
    pns = VAR_SCHEDULES[args.image_size]
    tok = VQVAEConfig(ch=args.tokenizer_ch, patch_nums=pns)
    model = VARConfig(depth=args.depth, patch_nums=pns, dtype=args.dtype, remat=args.remat, attn_impl=args.attn,
                      vocab_size=tok.vocab_size, cvae=tok.z_channels)
    return {"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(model)}


# -- measurement helpers ------------------------------------------------------------------------
def device_desc() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU, {cores} cores"
    return f"{d.device_kind} x{jax.device_count()}"


def max_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def device_peak_bytes():
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends do not implement it
        stats = None
    return None if not stats else stats.get("peak_bytes_in_use")


def executable_bytes(compiled):
    """arguments + outputs + temporaries of a compiled executable, or None if unavailable."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def peak_memory_text(compiled) -> str:
    dev = device_peak_bytes()
    if dev is not None:
        return f"{fmt_bytes(dev)} (device peak)"
    return f"{fmt_bytes(executable_bytes(compiled))} exec, {fmt_bytes(max_rss_bytes())} RSS"


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        block(fn())
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        block(fn())
        out.append(time.perf_counter() - t)
    return out


# -- phases -------------------------------------------------------------------------------------
def bench_train(pipe: arjax.Pipeline, args, rng: np.random.Generator) -> dict:
    cfg = pipe.cfg
    model = nnx.merge(pipe.graphdef, pipe.state)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    b, first_l = args.batch, cfg.scale_lens[0]
    labels = jnp.asarray(rng.integers(0, cfg.num_classes, (b,)), jnp.int32)
    var_input = jnp.asarray(rng.standard_normal((b, cfg.seq_len - first_l, cfg.cvae)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, cfg.seq_len)), jnp.int32)

    def loss_fn(params, rest, labels, var_input, targets):
        logits = nnx.merge(graphdef, params, rest)(labels, var_input)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    with jax.default_matmul_precision(args.precision):
        t = time.perf_counter()
        compiled = step.lower(params, rest, labels, var_input, targets).compile()
        compile_s = time.perf_counter() - t
    if args.compile_only:
        return {"phase": "train fwd+bwd", "compile_s": compile_s, "times": None,
                "mem": f"{fmt_bytes(executable_bytes(compiled))} exec (compile only)", "note": "not run"}
    times = timed(lambda: compiled(params, rest, labels, var_input, targets), args.steps, args.warmup)
    loss, _ = compiled(params, rest, labels, var_input, targets)
    if not np.isfinite(float(loss)):
        raise RuntimeError(f"non-finite training loss {float(loss)}")
    return {"phase": "train fwd+bwd", "compile_s": compile_s, "times": times, "mem": peak_memory_text(compiled),
            "note": f"loss {float(loss):.3f} (ln V = {np.log(cfg.vocab_size):.3f})"}


def bench_sample(pipe: arjax.Pipeline, args, rng: np.random.Generator) -> dict:
    labels = rng.integers(0, pipe.cfg.num_classes, (args.batch,))
    kw = dict(cfg=1.5, top_k=900, top_p=0.96)
    compiled, compile_s = None, None
    # Compile ahead of time through the pipeline's own jitted sampler with exactly the arguments
    # Pipeline.sample passes, so the first timed call hits the cache; this reaches into a private
    # attribute, so fall back to "first call minus steady state" if the pipeline changes.
    try:
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(args.seed), i))(jnp.arange(args.batch))
        with jax.default_matmul_precision(pipe.precision):
            t = time.perf_counter()
            compiled = pipe._sample.lower(pipe.tokenizer.state, pipe.state, jnp.asarray(labels, jnp.int32), keys,
                                          jnp.float32(kw["cfg"]), None, None, top_k=kw["top_k"], top_p=kw["top_p"],
                                          options=()).compile()
            compile_s = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - diagnostics only
        print(f"[sample] ahead-of-time compile unavailable ({type(e).__name__}: {e}); "
              f"compile time = first call - steady state", file=sys.stderr)
    if args.compile_only:
        return {"phase": "sample cfg1.5 k900 p0.96", "compile_s": compile_s or float("nan"), "times": None,
                "mem": f"{fmt_bytes(executable_bytes(compiled) if compiled else None)} exec (compile only)",
                "note": "not run"}
    t = time.perf_counter()
    images = block(pipe.sample(labels, seed=args.seed, **kw))
    first_s = time.perf_counter() - t
    times = timed(lambda: pipe.sample(labels, seed=args.seed, **kw), args.steps, max(args.warmup - 1, 0))
    if compile_s is None:
        compile_s = max(first_s - float(np.median(times)), 0.0)
    elif first_s > 3 * float(np.median(times)) + 1.0:
        print(f"[sample] warning: first call after compiling took {first_s:.1f}s, "
              f"the AOT compile may have missed the cache", file=sys.stderr)
    images = np.asarray(images)
    if images.shape[0] != args.batch or not np.isfinite(images).all():
        raise RuntimeError(f"bad sampler output: shape {images.shape}")
    return {"phase": "sample cfg1.5 k900 p0.96", "compile_s": compile_s, "times": times,
            "mem": peak_memory_text(compiled),
            "note": f"first call {first_s:.1f}s incl. tokenizer decode"}


def param_count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state) if hasattr(x, "shape"))


def main(argv=None):
    args = parse_args(argv)
    meta = make_meta(args)
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    pipe = arjax.build(meta, seed=args.seed, precision=args.precision)
    build_s = time.perf_counter() - t
    cfg = pipe.cfg
    n_var = param_count(nnx.state(nnx.merge(pipe.graphdef, pipe.state), nnx.Param))
    n_tok = param_count(nnx.state(pipe.tokenizer.module, nnx.Param))
    config = (f"VAR-d{cfg.depth} (C={cfg.embed_dim}, H={cfg.num_heads}, {n_var / 1e6:.1f}M) "
              f"{args.dtype}, attn {args.attn}, tok ch{args.tokenizer_ch} ({n_tok / 1e6:.1f}M), {args.image_size}px L={cfg.seq_len}")
    print(f"# device: {device_desc()} ({platform.machine()})  jax {jax.__version__}  backend {jax.default_backend()}",
          flush=True)
    print(f"# config: {config}; matmul precision {args.precision}; built in {build_s:.1f}s", flush=True)

    rows = []
    if not args.skip_train:
        rows.append(bench_train(pipe, args, rng))
        print(f"# {rows[-1]['phase']}: done ({rows[-1]['note']})", flush=True)
    if not args.skip_sample:
        rows.append(bench_sample(pipe, args, rng))
        print(f"# {rows[-1]['phase']}: done ({rows[-1]['note']})", flush=True)

    date = datetime.date.today().isoformat()
    header = ["device", "date", "config", "phase", "batch", "compile s", "ms/step", "img/s", "peak memory"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r["times"] is None:
            lines.append("| " + " | ".join([device_desc(), date, config, r["phase"], str(args.batch),
                                            f"{r['compile_s']:.1f}", "not run", "-", r["mem"]]) + " |")
            continue
        ms = 1000 * float(np.median(r["times"]))
        spread = 1000 * (max(r["times"]) - min(r["times"]))
        lines.append("| " + " | ".join([
            device_desc(), date, config, r["phase"], str(args.batch), f"{r['compile_s']:.1f}",
            f"{ms:.0f} ± {spread / 2:.0f}" if len(r["times"]) > 1 else f"{ms:.0f}",
            f"{args.batch / (ms / 1000):.2f}", r["mem"]]) + " |")
    print()
    print("\n".join(lines))
    print(f"\n(ms/step: median of {args.steps} timed steps after {args.warmup} warm-up, ± half the range; "
          f"command: python benchmarks/var_bench.py {' '.join(sys.argv[1:] if argv is None else argv)})")


if __name__ == "__main__":
    main()
