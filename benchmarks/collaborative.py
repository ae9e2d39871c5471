"""Collaborative decoding (CoDe, Chen et al. 2024, arXiv 2411.17787): what it saves and what it costs.

A large VAR (the drafter) samples the first `draft_scales` scales, a small one on the same tokenizer (the
refiner) the rest (`Pipeline.sample(..., refiner=small, draft_scales=N)`; arjax/sample/collaborative.py).

    python benchmarks/collaborative.py                      # both parts (trains the small refiner if missing)
    python benchmarks/collaborative.py --only quality       # just part "quality"
    python benchmarks/collaborative.py --only speed --drafts 4,6,8 --steps 5

Part "speed": VAR-d30 (drafter) / VAR-d16 (refiner) shapes with random weights at 256 px (schedule
1,2,3,4,5,6,8,10,13,16; 680 tokens; vocab 4096, Cvae 32), sampler cfg 1.5, top-k 900, top-p 0.96. The
tokenizer is built with `--tokenizer-ch` base channels (default 32, not the released 160, to keep its
decoder cheap on CPU; both models share it, as CoDe requires). Rows: the drafter alone (= draft_scales
10), CoDe with each of `--drafts`, the refiner alone (= draft_scales 0). Per row:

* GFLOPs per image: XLA's cost analysis of the lowered (not compiled) jitted sampler, transformer calls
  for the conditional and unconditional rows, filters and the tokenizer's decoder included; lowered on
  abstract parameters (nothing allocated), so it is cheap at any depth (`--flops-depths`, default 30,16).
  Drafter share: (F(N) - F(refiner alone)) / (F(N) - decoder), i.e. everything the N-scale row computes
  beyond what the refiner alone would; the refiner's one block-causal pass over the drafted scales
  (filling its KV cache) counts as the refiner's. The analytic share (tokens x transformer parameters)
  is in the JSON too.
* ms per batch: `Pipeline.sample` of `--batch` images, median of `--steps` rounds that call every row once
  in turn, after each row's first call (which compiles; its excess over the median is reported as compile
  seconds), unless `--no-time`; timed at
  `--drafter-depth` / `--refiner-depth`, default 15 / 8: half of 30 / 16 in depth, so the same depth and
  width ratio (parameters 0.26B / 0.04B, 6.6x; d30 / d16: 2.01B / 0.31B, 6.5x). d30 / d16 themselves
  (float32, 8 + 1.2 GB of parameters) passed 19 GB RSS while compiling the drafter's sampler on a 24 GB,
  2-core CPU machine (built in 2 min; at the ~90 GFLOP/s d15 reached, a drafter call would take ~45 s
  and the part, compiles included, ~15-20 min), so they are not the default; `--drafter-depth 30 --refiner-depth 16` times them where memory allows. The FLOP speed-up
  at the timed depths is printed next to the wall speed-up. Speed-ups are against the drafter alone.
  The paper's GPU numbers exclude the VAE decoder; these include it (the same in every row).

The paper (CoDe README, github.com/czg1225/CoDe; arXiv 2411.17787 abstract), VAR-d30 drafter + VAR-d16
refiner, 256 px, fine-tuned (specialised) drafter/refiner pairs: N=9 FID 1.94, N=8 1.98 (1.7x speed-up, ~half
the memory; VAR-d30 alone 1.95), N=7 2.11, N=6 2.27 (2.9x, 41 images/s on one RTX 4090). arjax's CoDe is
the training-free variant (the paper's code runs it with `--training_free`), so its quality can fall
further than these fine-tuned pairs'.

Part "quality": the two VAR sizes of the built-in dataset (10 shape x colour classes, 32 px, schedule
1,2,3,4,6,8), trained with `configs/family.py:var` (3000 steps) on one tokenizer: the large one is the
family table's (runs/family/var/model, d3 w128, 0.95M parameters), the small refiner has the same config
and budget with a smaller transformer (default d3 w64 1 head, ~0.25M; trained into `--small-dir` when
missing, resumable). Each row is scored with the family table's evaluation (`arjax.eval.run.
evaluate_pipeline`, which passes refiner= and draft_scales= through to `Pipeline.sample`): `--eval-per-class`
samples per class (default 50: 500), class-major, sample i from fold_in(key(1), i), the config's sampler
settings (cfg 4.0, top-k 900, top-p 0.96); the built-in classifier's (runs/family/classifier) class
accuracy (the class it assigns: right colour, plausible shape), shape accuracy (its shape head alone, a
diagnostic: it can be lower than class accuracy) and Frechet distance of its features against real images
(lower is better). The sampling time is ms per image for a batch of 50 after compiling (as
benchmarks/family.py), median of `--rounds` rounds interleaved over the rows; the speed-up is against the
large model alone. Rows: large alone, small alone, CoDe with `--quality-drafts`.

Reading the numbers: the FLOP speed-up is what CoDe saves in arithmetic; the wall speed-up on a shared
2-core CPU moves by tens of percent from run to run (hence the interleaved rounds). On the built-in
dataset both models are tiny and their time is mostly the per-scale sampler work and the decoder, so the
speed-ups there are modest and noisy; what that part shows is how much quality CoDe keeps.

Both tables are printed and merged into `OUT/collaborative.json` (default runs/code).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import family  # noqa: E402  (benchmarks/family.py: its training, timing and evaluation helpers)

SPEED_PNS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SAMPLER = dict(cfg=1.5, top_k=900, top_p=0.96)  # part "speed": VAR's released sampler settings
SMALL_SETS = "model.depth=3,model.embed_dim=64,model.num_heads=1"
# part speed: peak RSS per float32 parameter byte of the timed pair; d30 + d16 (8.6 GiB of parameters) passed
# 17.9 GiB RSS, still rising, while compiling the drafter's sampler (2.1x); the margin is for the rest
RSS_PER_PARAM_BYTE = 2.5
TIMING_BATCH = 50  # part quality: images per timed sampler call, as benchmarks/family.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("all", "speed", "quality"), default="all")
    p.add_argument("--out", default="runs/code", help="where collaborative.json is written (merged per part)")
    s = p.add_argument_group("part speed")
    s.add_argument("--drafter-depth", type=int, default=15,
                   help="timed drafter depth (width 64 x depth); default half of d30: see the module docstring")
    s.add_argument("--refiner-depth", type=int, default=8, help="timed refiner depth (default half of d16)")
    s.add_argument("--flops-depths", default="30,16", help="drafter,refiner depths of the FLOP count")
    s.add_argument("--drafts", default="6,8", help="CoDe rows: scales the drafter samples (of 10)")
    s.add_argument("--tokenizer-ch", type=int, default=32, help="tokenizer base channels (released: 160)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--steps", type=int, default=3, help="timed calls per row after the compiling one")
    s.add_argument("--no-time", action="store_true", help="FLOPs only: build nothing, time nothing")
    q = p.add_argument_group("part quality")
    q.add_argument("--large", default="runs/family/var/model", help="the drafter (benchmarks/family.py's VAR)")
    q.add_argument("--tokenizer", default="runs/family/tokenizer/model", help="the tokenizer both train on")
    q.add_argument("--small-dir", default="runs/code/small", help="the refiner's workdir (trained if missing)")
    q.add_argument("--small-set", default=SMALL_SETS, help="comma list of config overrides for the refiner")
    q.add_argument("--quality-drafts", default="2,3,4", help="CoDe rows: scales the drafter samples (of 6)")
    q.add_argument("--eval-per-class", type=int, default=50)
    q.add_argument("--classifier-dir", default="runs/family/classifier")
    q.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds of the sampling time")
    a = p.parse_args(argv)
    if min(a.batch, a.steps, a.eval_per_class, a.rounds) < 1:
        p.error("--batch, --steps, --eval-per-class and --rounds must be >= 1")
    if a.tokenizer_ch % 32:
        p.error(f"--tokenizer-ch must be a multiple of 32 (GroupNorm has 32 groups); got {a.tokenizer_ch}")
    return a


def int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected a comma list of integers; got {text!r}") from None


def device_desc() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}), {len(os.sched_getaffinity(0))} cores"
    return f"{d.device_kind} x{jax.device_count()}"


# -- part speed: models, FLOPs ---------------------------------------------------------------------
def speed_meta(depth: int, tokenizer_ch: int) -> dict:
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    tok = VQVAEConfig(ch=tokenizer_ch, patch_nums=SPEED_PNS)
    model = VARConfig(depth=depth, patch_nums=SPEED_PNS, vocab_size=tok.vocab_size, cvae=tok.z_channels)
    return {"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(model)}


def abstract_modules(meta: dict):
    """(tokenizer, VAR) with ShapeDtypeStruct leaves: shapes only, nothing allocated."""
    from arjax import members
    from arjax.nn.init import abstract_module
    member, tok = members.member_of(meta), members.tokenizer_of(meta)
    return (abstract_module(tok.cls, tok.config_cls(**meta["tokenizer"])),
            abstract_module(member.cls, member.config_cls(**meta["model"])))


def param_count(module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def lowered_flops(lowered) -> float:
    """XLA's FLOP count of a lowered computation; the host-client fallback (arjax.plan) where the public
    `Lowered.cost_analysis` has none."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 -- not implemented on some backends
        cost = None
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    if not flops:
        from arjax.plan import _lowered_flops
        flops = _lowered_flops(lowered)
    if not flops:
        raise RuntimeError("XLA's cost analysis returned no FLOPs for the lowered sampler (public and fallback)")
    return flops


def sampler_flops(tok, drafter, refiner, draft: int, batch: int) -> float:
    """FLOPs of one call of the collaborative sampler (what Pipeline.sample jits) on `batch` images;
    draft = number of scales (drafter alone) or 0 (refiner alone) is the single-model sampler."""
    from arjax.sample.collaborative import sample_collaborative
    (tgd, tst), (dgd, dst), (rgd, rst) = nnx.split(tok), nnx.split(drafter), nnx.split(refiner)

    def fn(tst, dst, rst, labels, keys):
        return sample_collaborative(nnx.merge(tgd, tst), nnx.merge(dgd, dst), nnx.merge(rgd, rst), labels, keys,
                                    draft_scales=draft, **SAMPLER)[0]

    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
    return lowered_flops(jax.jit(fn).lower(tst, dst, rst, labels, keys))


def decoder_flops(tok, batch: int) -> float:
    gd, st = nnx.split(tok)
    idx = jax.ShapeDtypeStruct((batch, sum(p * p for p in SPEED_PNS)), jnp.int32)
    return lowered_flops(jax.jit(lambda st, t: nnx.merge(gd, st).decode(t)).lower(st, idx))


def speed_plan(drafts: list[int]) -> list[tuple[str, int]]:
    """(row name, draft scales): the drafter alone, CoDe rows, the refiner alone."""
    k = len(SPEED_PNS)
    bad = [n for n in drafts if not 0 < n < k]
    if bad:
        raise SystemExit(f"--drafts: CoDe hands over between scales 1 and {k - 1}; got {bad}")
    return [("drafter alone", k), *[(f"CoDe N={n}", n) for n in drafts], ("refiner alone", 0)]


def tokens_split(draft: int) -> tuple[int, int]:
    lens = [p * p for p in SPEED_PNS]
    return sum(lens[:draft]), sum(lens[draft:])


def refiner_positions(draft: int) -> int:
    """Positions the refiner's blocks run over: with CoDe all of them (its prefill re-reads the drafted ones)."""
    drafted, rest = tokens_split(draft)
    return drafted + rest if rest else 0


def drafter_share(flops: dict, draft: int, decoder: float) -> float:
    """The drafter's share of a row's FLOPs (decoder excluded). F(N) - F(0) is the drafter's work: the refiner
    runs its blocks over all positions in both (CoDe: prefill + the remaining scales), and F(0) - decoder is
    the refiner's (up to its output head on the drafted tokens, <1%)."""
    if draft == 0 or draft == len(SPEED_PNS):
        return float(draft > 0)
    return min(max((flops[draft] - flops[0]) / (flops[draft] - decoder), 0.0), 1.0)


def flop_rows(plan, depths: tuple[int, int], tokenizer_ch: int, batch: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    tok, drafter = abstract_modules(speed_meta(depths[0], tokenizer_ch))
    _, refiner = abstract_modules(speed_meta(depths[1], tokenizer_ch))
    pd, pr = param_count(drafter), param_count(refiner)
    dec = decoder_flops(tok, batch) / batch
    flops = {n: sampler_flops(tok, drafter, refiner, n, batch) / batch for _, n in plan}
    rows = []
    for name, n in plan:
        td, tr = tokens_split(n)
        rows.append(dict(row=name, draft_scales=n, drafter_tokens=td, refiner_tokens=tr, gflops=flops[n] / 1e9,
                         drafter_share=drafter_share(flops, n, dec),
                         drafter_share_analytic=pd * td / (pd * td + pr * refiner_positions(n))))
    print(f"# FLOPs at d{depths[0]} ({pd / 1e9:.2f}B params) / d{depths[1]} ({pr / 1e9:.2f}B), decoder "
          f"{dec / 1e9:.1f} GFLOPs/image, counted in {time.perf_counter() - t0:.0f}s", flush=True)
    return rows, dec / 1e9


# -- part speed: wall time -------------------------------------------------------------------------
def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def available_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in text.splitlines() if line.startswith("MemAvailable:")]
    return kib[0] / 2 ** 20 if kib else None


def check_memory(args) -> None:
    """Refuse to time models whose parameter bytes x RSS_PER_PARAM_BYTE would not fit in the available memory."""
    params = sum(param_count(abstract_modules(speed_meta(d, args.tokenizer_ch))[1])
                 for d in (args.drafter_depth, args.refiner_depth))
    need, have = params * 4 * RSS_PER_PARAM_BYTE / 2 ** 30, available_gib()
    if have is not None and need > have:
        raise SystemExit(f"timing d{args.drafter_depth} / d{args.refiner_depth} needs about {need:.0f} GiB "
                         f"({params / 1e9:.2f}B float32 parameters x {RSS_PER_PARAM_BYTE}) and {have:.0f} GiB are "
                         f"available: use smaller --drafter-depth / --refiner-depth, or --no-time for FLOPs only")


def build_pair(args):
    """Random-weight drafter and refiner pipelines sharing one tokenizer (same seed, same tokenizer config)."""
    import arjax
    t0 = time.perf_counter()
    big = arjax.build(speed_meta(args.drafter_depth, args.tokenizer_ch), seed=0)
    small = arjax.build(speed_meta(args.refiner_depth, args.tokenizer_ch), seed=0)
    print(f"# built d{args.drafter_depth} and d{args.refiner_depth} in {time.perf_counter() - t0:.0f}s "
          f"(max RSS {max_rss_gib():.1f} GiB)", flush=True)
    return big, small


def sampler_call(big, small, draft: int, batch: int):
    """The user-facing call of a row: drafter alone, refiner alone, or CoDe handing over after `draft` scales."""
    labels = np.arange(batch) % big.cfg.num_classes
    if draft == len(SPEED_PNS):
        return lambda: big.sample(labels, seed=0, **SAMPLER)
    if draft == 0:
        return lambda: small.sample(labels, seed=0, **SAMPLER)
    return lambda: big.sample(labels, seed=0, refiner=small, draft_scales=draft, **SAMPLER)


def compile_seconds(call, draft: int) -> float:
    """Seconds of the first call (compile + one run); checks the samples."""
    t0 = time.perf_counter()
    images = np.asarray(jax.block_until_ready(call()))
    if not np.isfinite(images).all():
        raise RuntimeError(f"draft_scales {draft}: non-finite samples")
    return time.perf_counter() - t0


def time_rows(plan, args) -> tuple[dict, float]:
    """{draft scales: {ms, compile_s}} at the timed depths, and the total seconds (build included). After each
    row's compiling call, `--steps` rounds run every row once in turn (machine noise hits all alike)."""
    t0 = time.perf_counter()
    big, small = build_pair(args)
    calls = {n: sampler_call(big, small, n, args.batch) for _, n in plan}
    first = {}
    for name, n in plan:
        first[n] = compile_seconds(calls[n], n)
        print(f"# {name}: first call {first[n]:.0f}s (max RSS {max_rss_gib():.1f} GiB)", flush=True)
    times = {n: [] for n in calls}
    for _ in range(args.steps):
        for n, call in calls.items():
            times[n].append(family.median_time(call, 1))
    timed = {n: dict(ms=float(np.median(t)) * 1e3, compile_s=max(first[n] - float(np.median(t)), 0.0))
             for n, t in times.items()}
    return timed, time.perf_counter() - t0


def part_speed(args) -> dict:
    plan = speed_plan(int_list(args.drafts, "--drafts"))
    if not args.no_time:
        check_memory(args)
    depths = tuple(int_list(args.flops_depths, "--flops-depths"))
    if len(depths) != 2:
        raise SystemExit(f"--flops-depths: give drafter,refiner; got {args.flops_depths!r}")
    rows, dec = flop_rows(plan, depths, args.tokenizer_ch, args.batch)
    for r in rows:
        r["flop_speedup"] = rows[0]["gflops"] / r["gflops"]
    res = dict(rows=rows, decoder_gflops=dec, flops_depths=depths, timed_depths=None, tokenizer_ch=args.tokenizer_ch,
               batch=args.batch, steps=args.steps, sampler=SAMPLER)
    if args.no_time:
        return res
    timed_depths = (args.drafter_depth, args.refiner_depth)
    # the FLOP speed-up at the timed depths too, to set against their wall speed-up
    trows = rows if timed_depths == depths else flop_rows(plan, timed_depths, args.tokenizer_ch, args.batch)[0]
    timed, total = time_rows(plan, args)
    for r, t in zip(rows, trows):
        n = r["draft_scales"]
        r.update(timed[n], timed_gflops=t["gflops"], timed_flop_speedup=trows[0]["gflops"] / t["gflops"],
                 wall_speedup=timed[len(SPEED_PNS)]["ms"] / timed[n]["ms"])
    return {**res, "timed_depths": timed_depths, "timing_total_s": total, "max_rss_gib": max_rss_gib()}


def print_speed(res: dict) -> None:
    (d, r), timed = res["flops_depths"], res["timed_depths"]
    print(f"\nPart speed: VAR-d{d} drafter / VAR-d{r} refiner, random weights, 256 px (680 tokens), tokenizer ch "
          f"{res['tokenizer_ch']}, cfg 1.5 top-k 900 top-p 0.96; GFLOPs at d{d} / d{r}"
          + (f"; wall time at d{timed[0]} / d{timed[1]}, batch {res['batch']}, median of {res['steps']} "
             f"interleaved rounds"
             if timed else "; not timed (--no-time)"))
    print("| row | draft scales | tokens drafter / refiner | GFLOPs/image | drafter share | FLOP speed-up | "
          + (f"FLOP speed-up d{timed[0]}/d{timed[1]} | " if timed else "") + "ms/batch | compile (s) | wall speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed else ""))
    for x in res["rows"]:
        wall = (f"{x['timed_flop_speedup']:.2f}x | {x['ms']:.0f} | {x['compile_s']:.0f} | {x['wall_speedup']:.2f}x"
                if timed else "- | - | -")
        print(f"| {x['row']} | {x['draft_scales']} | {x['drafter_tokens']} / {x['refiner_tokens']} | "
              f"{x['gflops']:.0f} | {100 * x['drafter_share']:.0f}% | {x['flop_speedup']:.2f}x | {wall} |")
    print(f"(GFLOPs include the tokenizer decoder, {res['decoder_gflops']:.1f} GFLOPs/image; CoDe's refiner also "
          f"prefills the drafted tokens in one block-causal pass, counted in its share"
          + (f"; timing took {res['timing_total_s'] / 60:.1f} min, max RSS {res['max_rss_gib']:.1f} GiB)"
             if timed else ")"))


# -- part quality ----------------------------------------------------------------------------------
def small_overrides(args) -> list[str]:
    return [f"tokenizer_dir={args.tokenizer}", *[s.strip() for s in args.small_set.split(",") if s.strip()]]


def train_small(args) -> dict:
    """The refiner: configs/family.py:var with a smaller transformer (resumable; reused when finished)."""
    from arjax.cli import _train_stage
    t0 = time.perf_counter()
    summary = _train_stage(f"{family.CONFIG}:var", Path(args.small_dir), small_overrides(args))
    print(f"# refiner: {summary.get('steps')} steps, trained in {summary.get('seconds', 0):.0f}s "
          f"(this call {time.perf_counter() - t0:.0f}s)", flush=True)
    return summary


def check_large(args) -> None:
    if not (Path(args.large) / "arjax.json").exists():
        raise SystemExit(f"{args.large} is missing: train it first with `python benchmarks/family.py "
                         f"--members var` (or `arjax train --config configs/family.py:var --workdir runs/family/var "
                         f"--set tokenizer_dir={args.tokenizer}`)")


def sampler_settings() -> tuple[dict, dict]:
    """The family table's VAR sampler settings (cfg, top_k, top_p) and member options (VAR's more_smooth when
    set), from configs/family.py:var's `sample` block, as benchmarks/family.py reads them."""
    from arjax import members
    from arjax.config import load_config
    s = load_config(f"{family.CONFIG}:var").sample
    opts = {f.name: s[f.name] for f in dataclasses.fields(members.member("var").options_cls)
            if f.name in s and s[f.name] not in (None, ())}
    return dict(cfg=s.cfg, top_k=s.top_k, top_p=s.top_p), opts


def quality_row(name, pipe, draft, opts, settings, args) -> dict:
    from arjax.eval.run import evaluate_pipeline
    report = evaluate_pipeline(pipe, per_class=args.eval_per_class, seed=1, classifier_dir=Path(args.classifier_dir),
                               progress=False, log=lambda *_: None, sample_options=opts, **settings)
    row = dict(row=name, draft_scales=draft, acc=report["class_accuracy"], shape_acc=report["shape_accuracy"],
               fd=report["frechet_distance"])
    print(f"# {row}", flush=True)
    return row


def interleaved_ms_per_image(calls: list, rounds: int, batch: int) -> list[float]:
    """ms per image of each call (a batch of `batch` samples): compiled first, then `rounds` rounds that
    run every call once in turn (so machine noise hits all alike), median over rounds."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(rounds):
        for t, call in zip(times, calls):
            t.append(family.median_time(call, 1))
    return [float(np.median(t)) * 1e3 / batch for t in times]


def part_quality(args) -> dict:
    import arjax
    check_large(args)
    summary = train_small(args)
    large, small = arjax.load(args.large), arjax.load(Path(args.small_dir) / "model")
    k = len(large.cfg.patch_nums)
    drafts = int_list(args.quality_drafts, "--quality-drafts")
    if bad := [n for n in drafts if not 0 < n < k]:
        raise SystemExit(f"--quality-drafts: CoDe hands over between scales 1 and {k - 1}; got {bad}")
    settings, base = sampler_settings()
    plan = [("large alone", large, k, base), ("small alone", small, 0, base),
            *[(f"CoDe N={n}", large, n, {**base, "refiner": small, "draft_scales": n}) for n in drafts]]
    rows = [quality_row(name, pipe, n, opts, settings, args) for name, pipe, n, opts in plan]
    labels = np.arange(TIMING_BATCH) % large.cfg.num_classes  # as benchmarks/family.py::sample_cost
    calls = [lambda p=pipe, o=opts: p.sample(labels, seed=1, **settings, **o) for _, pipe, _, opts in plan]
    ms = interleaved_ms_per_image(calls, args.rounds, TIMING_BATCH)
    for r, t in zip(rows, ms):
        r.update(sample_ms=t, speedup=ms[0] / t)
    return dict(rows=rows, params={"large": param_count(nnx.merge(large.graphdef, large.state)),
                                   "small": param_count(nnx.merge(small.graphdef, small.state))},
                schedule=list(large.cfg.patch_nums), settings=settings, per_class=args.eval_per_class,
                timing=f"batch {TIMING_BATCH}, median of {args.rounds} interleaved rounds",
                small_train_s=summary.get("seconds"), small_overrides=small_overrides(args))


def print_quality(res: dict) -> None:
    p, s = res["params"], res["settings"]
    print(f"\nPart quality: built-in dataset, schedule {tuple(res['schedule'])}, large {p['large'] / 1e6:.2f}M / "
          f"small {p['small'] / 1e6:.2f}M params, {res['per_class']} samples per class, cfg {s['cfg']} "
          f"top-k {s['top_k']} top-p {s['top_p']}")
    print("| row | draft scales | class accuracy | shape accuracy | Frechet distance | sampling (ms/image) | "
          "speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for x in res["rows"]:
        print(f"| {x['row']} | {x['draft_scales']} | {x['acc']:.1f}% | {x['shape_acc']:.1f}% | {x['fd']:.1f} | "
              f"{x['sample_ms']:.1f} | {x['speedup']:.2f}x |")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out) / "collaborative.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    header = dict(date=datetime.date.today().isoformat(), device=device_desc(), jax=jax.__version__)
    print(f"# benchmarks/collaborative.py, {header['date']}, {header['device']}, jax {jax.__version__}", flush=True)
    if args.only in ("all", "quality"):
        saved["quality"] = {**header, **part_quality(args)}
        print_quality(saved["quality"])
    if args.only in ("all", "speed"):
        saved["speed"] = {**header, **part_speed(args)}
        print_speed(saved["speed"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(saved, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
