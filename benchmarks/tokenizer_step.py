"""The tokenizer's training step under XLA's default compile options and under `arjax.xla_cpu`'s (what
`arjax train` uses for tokenizers on CPU), side by side in one process: alternating rounds, medians.

    python benchmarks/tokenizer_step.py                      # the quickstart tokenizer, batch 16
    python benchmarks/tokenizer_step.py --set tokenizer.ch=64 --batch 8 --steps 10 --rounds 3

Prints one table row per setting (ms per step, its spread over rounds, the compile + first step) and the
ratio. On a GPU or TPU both rows compile alike (the options apply to XLA:CPU only).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.py:tokenizer")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from arjax import xla_cpu
    from arjax.config import load_config
    from arjax.data import SyntheticShapes
    from arjax.train.tasks import TokenizerTask
    from arjax.train.trainer import build_optimizer, make_train_step, state_initializer

    cfg = load_config(args.config, args.set)
    task = TokenizerTask(cfg)
    tx = build_optimizer(cfg)[0]
    source = SyntheticShapes(4 * args.batch, task.image_size, seed=0)
    images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32) / 127.5 - 1
    batches = [{"image": jnp.asarray(images[i:i + args.batch])} for i in range(0, len(images), args.batch)]
    consts = task.constants()

    settings = {"XLA defaults": None, "arjax.xla_cpu options": xla_cpu.compiler_options()}
    runs = {}
    for name, options in settings.items():
        step = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay), static_argnums=3, donate_argnums=0,
                       compiler_options=options)
        state = jax.jit(state_initializer(task, tx, cfg))()
        t = time.perf_counter()
        state, m = step(state, consts, batches[0], task.phase(0))
        jax.block_until_ready(m)
        runs[name] = {"step": step, "state": state, "first_s": time.perf_counter() - t, "ms": []}
    for _ in range(args.rounds):
        for run in runs.values():
            t = time.perf_counter()
            for i in range(args.steps):
                run["state"], m = run["step"](run["state"], consts, batches[i % len(batches)], task.phase(i))
            jax.block_until_ready(m)
            run["ms"].append((time.perf_counter() - t) / args.steps * 1000)

    print(f"{jax.devices()[0].device_kind}, {args.config} {' '.join(args.set)}, batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print("| setting | options | ms / step (median) | min - max | compile + first step s |")
    print("|---|---|---:|---:|---:|")
    for name, run in runs.items():
        ms = np.asarray(run["ms"])
        print(f"| {name} | {settings[name]} | {np.median(ms):.0f} | {ms.min():.0f} - {ms.max():.0f} | "
              f"{run['first_s']:.1f} |")
    a, b = (float(np.median(r["ms"])) for r in runs.values())
    print(f"speed-up with the options: {a / b:.2f}x")


if __name__ == "__main__":
    main()
