"""The family (VAR, HMAR, FlexVAR, LlamaGen, MaskGIT) on equal footing, and HMAR's training step against
VAR's at 256 px.

    python benchmarks/family.py --out runs/family           # train all (resumable), measure, evaluate
    python benchmarks/family.py --only step256              # just the 256 px step-time comparison

Part 1 trains the three tokenizers (VAR's residual one for VAR and HMAR, FlexVAR's, and its one-scale
form for LlamaGen and MaskGIT) and the five members with `configs/family.py` (same data, batch, optimiser,
step budget and transformer size; `--steps` overrides the budget), then for each member:

* train step: median wall time of the jitted trainer step (`arjax.train.trainer.make_train_step`: loss,
  gradients, AdamW update) on a batch of cached-token shape, after compilation; FlexVAR on its full
  schedule (its sub-schedules are shorter, so its average step is cheaper);
* step memory: the compiled step's XLA memory analysis (arguments + outputs + temporaries);
* sampling: seconds per image for a batch of 50 after compilation (`Pipeline.sample`), with the member's
  sampler options from its config, and the sequential model calls per image (scales, tokens or steps);
* quality: `arjax eval`'s class accuracy and Frechet distance (`--eval-per-class` per class).

Part 2 times the forward+backward of VAR and HMAR transformers of one size on the 256 px schedule
(1, 2, 3, 4, 5, 6, 8, 10, 13, 16): HMAR's next-scale branch alone (its block-diagonal mask is computed
scale by scale) and with its masked branch, rounds interleaved so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CONFIG = "configs/family.py"
MEMBERS = ("var", "hmar", "flexvar", "llamagen", "maskgit")
TOKENIZER_OF = {"var": "tokenizer", "hmar": "tokenizer", "flexvar": "flex_tokenizer", "llamagen": "vq_tokenizer",
                "maskgit": "vq_tokenizer"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/family", help="run directory (reused: finished stages are not retrained)")
    p.add_argument("--only", choices=("all", "train", "step256"), default="all")
    p.add_argument("--steps", type=int, default=0, help="training budget per member (default: the config's)")
    p.add_argument("--members", default=",".join(MEMBERS),
                   help="comma list of members to train and measure (rows merge into OUT/family_table.json)")
    p.add_argument("--eval-per-class", type=int, default=50)
    p.add_argument("--timed-steps", type=int, default=20)
    p.add_argument("--hmar-steps", default="1,1,1,2,4,8", help="an HMAR masked-step schedule to evaluate too")
    p.add_argument("--depth", type=int, default=4, help="part 2: transformer depth (width 64 x depth)")
    p.add_argument("--batch", type=int, default=2, help="part 2: batch")
    p.add_argument("--rounds", type=int, default=5, help="part 2: interleaved timing rounds")
    return p.parse_args(argv)


def median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# -- part 1 ----------------------------------------------------------------------------------------
def train_all(out: Path, steps: int, which=MEMBERS) -> None:
    from arjax.cli import _train_stage
    for stage in dict.fromkeys(TOKENIZER_OF[m] for m in which):
        _train_stage(f"{CONFIG}:{stage}", out / stage)
    for m in which:
        sets = [f"tokenizer_dir={out / TOKENIZER_OF[m] / 'model'}"] + ([f"steps={steps}"] if steps else [])
        _train_stage(f"{CONFIG}:{m}", out / m, sets)


def step_cost(member: str, out: Path, timed: int) -> tuple[float, int]:
    """(median seconds per trainer step, compiled step bytes) on the member's training config."""
    from arjax.config import load_config
    from arjax import members
    from arjax.train.trainer import build_optimizer, make_train_step, state_initializer
    cfg = load_config(f"{CONFIG}:{member}", [f"tokenizer_dir={out / TOKENIZER_OF[member] / 'model'}"])
    task = members.task_class(cfg.task)(cfg)
    tx, _ = build_optimizer(cfg)
    state = jax.jit(state_initializer(task, tx, cfg))()
    consts = task.constants()
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, task.tok_cfg.vocab_size, (cfg.batch_size, task.seq_len)), jnp.int32),
             "label": jnp.asarray(rng.integers(0, task.model_cfg.num_classes, cfg.batch_size), jnp.int32)}
    phase = 0 if member == "flexvar" else task.phase(cfg.steps - 1)  # flexvar: schedule 0 = the full one
    step = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay), static_argnums=3)
    compiled = step.lower(state, consts, batch, phase).compile()
    mem = compiled.memory_analysis()
    nbytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], consts, batch)
        return m["loss"]

    run()
    return median_time(run, timed), nbytes


def sample_cost(pipe, options: dict) -> float:
    labels = np.arange(50) % pipe.cfg.num_classes
    pipe.sample(labels, **options)  # compile
    return median_time(lambda: pipe.sample(labels, seed=1, **options), 3) / len(labels)


def forwards(member: str, pipe, opts: dict) -> int:
    """Sequential model calls per image (each over the image's conditional and unconditional rows)."""
    if member == "hmar":
        return sum(opts.get("steps") or (1,) * len(pipe.schedule()))
    if member == "llamagen":
        return pipe.cfg.block_size
    if member == "maskgit":
        return opts.get("iterations", 8)
    return len(pipe.schedule(opts.get("patch_nums")))


def part1(args) -> list[dict]:
    import arjax
    from arjax import members
    from arjax.config import load_config
    from arjax.eval.run import evaluate_pipeline
    out = Path(args.out)
    which = [m.strip() for m in args.members.split(",") if m.strip()]
    if unknown := sorted(set(which) - set(MEMBERS)):
        raise SystemExit(f"--members: unknown {unknown}; known: {list(MEMBERS)}")
    train_all(out, args.steps, which)
    rows = []
    hmar_steps = tuple(int(s) for s in args.hmar_steps.split(","))
    for m in which:
        s = load_config(f"{CONFIG}:{m}").sample
        pipe = arjax.load(out / m / "model")
        summary = json.loads((out / m / "summary.json").read_text())
        sec, nbytes = step_cost(m, out, args.timed_steps)
        # the member's sampler options as its config sets them (unset / empty: the sampler's default)
        opts = {f.name: s[f.name] for f in dataclasses.fields(members.member(m).options_cls)
                if f.name in s and s[f.name] not in (None, ())}
        variants = [("", opts)]
        if m == "hmar":
            variants.append((f", masked steps {args.hmar_steps}", {"steps": hmar_steps}))
        for suffix, opts in variants:
            report = evaluate_pipeline(pipe, per_class=args.eval_per_class, seed=1, cfg=s.cfg, top_k=s.top_k,
                                       top_p=s.top_p, classifier_dir=out / "classifier", progress=False,
                                       log=lambda *_: None, sample_options=opts)
            rows.append(dict(member=m + suffix, params=sum(x.size for x in jax.tree.leaves(pipe.state)),
                             steps=summary["steps"], step_ms=sec * 1e3, step_mib=nbytes / 2 ** 20,
                             sample_ms=sample_cost(pipe, opts) * 1e3, forwards=forwards(m, pipe, opts),
                             acc=report["class_accuracy"],
                             fd=report["frechet_distance"]))
            print(rows[-1], flush=True)
    return rows


def print_part1(rows) -> None:
    print("\n| member | params | steps | train step (ms) | step memory (MiB) | sampling (ms/image) | forwards/image | "
          "class accuracy | Frechet distance |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['member']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['step_ms']:.1f} | {r['step_mib']:.1f} | "
              f"{r['sample_ms']:.1f} | {r['forwards']} | {r['acc']:.1f}% | {r['fd']:.1f} |")


# -- part 2 ----------------------------------------------------------------------------------------
def part2(args) -> list[tuple[str, float]]:
    from arjax.nn.init import create
    from arjax.nn.models.hmar import HMAR, HMARConfig
    from arjax.nn.models.var import VAR, VARConfig
    from arjax.ops.scales import VAR_SCHEDULES
    from arjax.train.hmar_loss import config_token_weights, hmar_loss
    from arjax.train.losses import token_cross_entropy
    pns, b, d = VAR_SCHEDULES[256], args.batch, args.depth
    common = dict(depth=d, vocab_size=4096, cvae=32, patch_nums=pns, num_classes=1000)
    rng = np.random.default_rng(0)
    length = sum(p * p for p in pns)
    tokens = jnp.asarray(rng.integers(0, 4096, (b, length)), jnp.int32)
    x_in = jnp.asarray(rng.normal(size=(b, length - 1, 32)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 1000, b), jnp.int32)

    def grad_fn(model, loss):
        gd, params = nnx.split(model, nnx.Param)
        f = jax.jit(jax.value_and_grad(lambda p: loss(nnx.merge(gd, p))))
        return lambda: f(params)

    def ce(m):
        return jnp.mean(token_cross_entropy(m(labels, x_in), tokens))

    hmar_ns = create(HMAR, HMARConfig(**common, mask_blocks=0), 0)
    hmar_mb = create(HMAR, HMARConfig(**common, mask_blocks=1), 0)
    weights = jnp.asarray(config_token_weights(hmar_mb.cfg))
    fns = {
        "VAR (block-causal)": grad_fn(create(VAR, VARConfig(**common), 0), ce),
        "HMAR next-scale branch (block-diagonal)": grad_fn(hmar_ns, ce),
        "HMAR with its masked branch": grad_fn(hmar_mb, lambda m: hmar_loss(m, tokens, x_in, labels, jax.random.key(0),
                                                                             weights=weights)[0]),
    }
    for f in fns.values():  # compile
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            times[k].append(median_time(f, 1))
    return [(k, float(np.median(v))) for k, v in times.items()]


def print_part2(rows, args) -> None:
    base = rows[0][1]
    print(f"\n256 px schedule (680 tokens), depth {args.depth} (width {64 * args.depth}), batch {args.batch}, "
          f"forward+backward, median of {args.rounds} interleaved rounds")
    print("| model | step (ms) | speed vs VAR |")
    print("|---|---:|---:|")
    for k, t in rows:
        print(f"| {k} | {t * 1e3:.0f} | {base / t:.2f}x |")


def main(argv=None):
    args = parse_args(argv)
    dev = jax.devices()[0]
    print(f"# benchmarks/family.py, {datetime.date.today()}, {dev.platform} ({dev.device_kind}), "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__}")
    if args.only in ("all", "train"):
        table = Path(args.out, "family_table.json")
        done = {r["member"]: r for r in json.loads(table.read_text())} if table.exists() else {}
        done.update({r["member"]: r for r in part1(args)})
        rows = sorted(done.values(), key=lambda r: (MEMBERS.index(r["member"].split(",")[0]), r["member"]))
        print_part1(rows)
        table.write_text(json.dumps(rows, indent=1))
    if args.only in ("all", "step256"):
        print_part2(part2(args), args)


if __name__ == "__main__":
    main()
