"""The `arjax` command: convert, init, train, sample, edit, eval, plan, quickstart."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def int_list(text: str) -> list[int] | None:
    if text.strip() == "all":
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def sampler_options(args) -> dict:
    """The member-specific sampling flags that were given (the pipeline checks they apply)."""
    from arjax.members.base import option_fields
    return {k: getattr(args, k) for k in option_fields() if getattr(args, k, None) is not None}


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per sampler option of any member (`arjax.members`), from its field: type, help, choices."""
    from arjax.members.base import option_fields
    for name, f in option_fields().items():
        flag = "--" + name.replace("_", "-")
        if f.metadata.get("ints"):
            p.add_argument(flag, type=int_list, default=None, help=f.metadata["help"])
        elif f.type in ("bool", bool):
            p.add_argument(flag, action="store_const", const=True, default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=f.metadata["help"])


def cmd_convert(args) -> None:
    import importlib

    from arjax import members
    from arjax.train.checkpoint import read_meta
    t0 = time.time()
    print(f"converting {args.member} ...")
    out = importlib.import_module(members.member(args.member).converter).run(args)
    m = read_meta(out)
    print(f"wrote {out} in {time.time() - t0:.1f}s: {m['family']}, model {m['model']}")


def cmd_init(args) -> None:
    import arjax
    from arjax import members
    from arjax.config import load_config
    cfg = load_config(args.config, args.set)
    if "task" not in cfg or cfg.task not in members.MEMBERS:
        raise ValueError(f"{args.config}: config key task names the member to initialise (one of "
                         f"{sorted(members.MEMBERS)}); got {cfg.get('task')!r}")
    if "tokenizer" in cfg:  # a model config (configs/var.py): tokenizer and model sizes in full
        tok_cfg, model_cfg = cfg.tokenizer.to_dict(), cfg.model.to_dict()
    else:  # a training config: the model on the tokenizer layout it plans with, as `arjax plan` builds it
        from arjax.plan import _abstract_task
        task = _abstract_task(cfg, members.task_class(cfg.task))
        tok_cfg, model_cfg = task.tok_cfg, task.model_cfg
    meta = members.model_meta(cfg.task, tok_cfg, model_cfg, source={"init": args.config, "seed": args.seed})
    out = arjax.save(arjax.build(meta, seed=args.seed), args.out)
    print(f"wrote a freshly initialised (untrained) model to {out}")


def sample_grid(checkpoint, classes, per_class, out, *, cfg, top_k, top_p, seed, batch_size=16, **options) -> Path:
    """Sample `per_class` images of each class and write a labelled PNG grid, with console progress.
    `checkpoint` is a model directory or a loaded `arjax.Pipeline`."""
    import jax
    import numpy as np
    from tqdm import tqdm

    import arjax
    from arjax.viz import save_grid

    t0 = time.time()
    pipe = checkpoint if isinstance(checkpoint, arjax.Pipeline) else arjax.load(checkpoint)
    print(f"model loaded ({time.time() - t0:.1f}s) on {jax.devices()[0].platform}: "
          f"{pipe.member.name}, {pipe.tokenizer.cfg.image_size}px, {pipe.tokenizer.seq_len()} tokens")
    labels = np.repeat(np.asarray(classes, np.int64), per_class)
    top_k = min(top_k, pipe.cfg.vocab_size)
    images = []
    # Per-sample keys make the batches independent: the grid is the same for any batch size.
    with tqdm(total=len(labels), desc="sampling", unit="img") as bar:
        for s in range(0, len(labels), batch_size):
            chunk = pipe.sample(labels[s:s + batch_size], cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                                first_index=s, **options)
            images.append(np.asarray(chunk))
            bar.update(len(chunk))
    path = save_grid(out, np.concatenate(images), labels, per_row=per_class, class_names=pipe.class_names)
    print(f"wrote {path} ({len(labels)} images, {time.time() - t0:.1f}s)")
    return path


def cmd_train(args) -> dict:
    from arjax import parallel
    # before anything touches a device: a multi-process run must be joined first
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    return _train(args.config, args.workdir, args.set)


def _train(config: str, workdir, overrides) -> dict:
    from arjax import parallel
    from arjax.config import load_config
    from arjax.train.trainer import train
    summary = train(load_config(config, list(overrides)), workdir)
    if parallel.is_main_process():
        _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    state = "finished" if summary["finished"] else "stopped early (rerun the same command to resume)"
    print(f"\n{summary['task']}: {state} at step {summary['steps']} in {summary['seconds']:.0f}s")
    for k, v in sorted(summary["metrics"].items()):
        print(f"  {k:>12s} {v:.4g}")
    for k in ("preview", "model_dir"):
        if k in summary:
            print(f"  {k:>12s} {summary[k]}")


def cmd_plan(args) -> None:
    import json

    from arjax import plan
    from arjax.config import load_config  # reads the config without starting JAX's backend
    if args.topology and args.devices:
        raise ValueError("give --devices (fake CPU devices) or --topology (a TPU topology), not both")
    mesh = [f"mesh.{kv.strip()}" for kv in args.mesh.split(",") if kv.strip()] if args.mesh else []
    cfg = load_config(args.config, [*args.set, *mesh])
    topology = args.topology
    if not topology and not args.devices and cfg.get("plan") and cfg.plan.get("topology"):
        topology = cfg.plan.topology  # the slice the recipe is planned for
        if not args.json:
            print(f"topology {topology} (the config's plan.topology; --topology or --devices to change)")
    if args.devices:
        plan.use_fake_cpu_devices(args.devices)  # before JAX starts its backend
    elif topology:
        plan.parse_topology(topology)  # a bad name is an error before anything loads
        if not os.environ.get("JAX_PLATFORMS"):  # compile-only devices: the host needs no accelerator, and a
            os.environ["JAX_PLATFORMS"] = "cpu"  # plan never opens this machine's TPU (a run may be using it)
    if args.max_batch and not topology:
        raise ValueError("--max-batch needs a memory limit: plan on --topology (fake CPU devices have none)")
    if args.hbm_gib is not None and not topology:
        raise ValueError("--hbm-gib caps a TPU's HBM; it needs --topology")
    if args.max_compiles < 1:
        raise ValueError("--max-compiles must be at least 1")
    plan.compiler_options(args.hbm_gib)  # checks the value
    req = plan.Request(args.config, list(args.set), args.mesh, topology, args.devices, args.hbm_gib)
    if args.variants:
        model = cfg.get("model") or {}
        if "remat" not in model or "attn_impl" not in model:
            raise ValueError(f"--variants varies model.remat and model.attn_impl; {args.config} has no such keys")
        impls = [s.strip() for s in args.variant_attn.split(",") if s.strip()]
        rows = plan.plan_variants(req, impls, with_max_batch=args.max_batch, max_compiles=args.max_compiles)
        if args.json:
            print(json.dumps({"variants": rows}))
        else:
            print(f"{args.config} on {topology or f'{args.devices} fake CPU devices'}, mesh "
                  f"{args.mesh or 'of the config'}, global batch {cfg.batch_size}")
            print(plan.format_variants(rows, args.max_batch))
        return
    devices = plan.topology_devices(topology) if topology else None
    p = plan.plan(cfg, devices, hbm_gib=args.hbm_gib, flops=not args.no_flops)
    search = plan.max_batch(req, p, args.max_compiles) if args.max_batch else None
    if args.json:
        print(json.dumps({"plan": p.to_dict(), "max_batch": search.to_dict() if search else None}))
        return
    print(plan.format_plan(p, cfg))
    if search:
        print(plan.format_search(search, p.batch_shards, p.accum_steps))
    elif p.fits is False:
        print("  (--max-batch finds the largest per-chip batch that fits, one compile per candidate)")


def cmd_sample(args) -> None:
    options = sampler_options(args)
    if args.refiner or args.draft_scales is not None:
        if not (args.refiner and args.draft_scales is not None):
            raise ValueError("collaborative decoding takes both --refiner DIR and --draft-scales N")
        import arjax
        options.update(refiner=arjax.load(args.refiner), draft_scales=args.draft_scales)
    if args.npz:  # an evaluation set, resumable, in the ADM suite's format; every process of a run helps
        from arjax import parallel
        parallel.initialize()
        import arjax
        from arjax.sample.bulk import class_major_labels, sample_to_npz
        pipe = arjax.load(args.checkpoint)
        labels = class_major_labels(pipe.cfg.num_classes, args.per_class, args.classes)
        out = sample_to_npz(pipe, labels, args.npz, batch_size=args.batch_size, cfg=args.cfg, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, **options)
        if parallel.is_main_process():
            print(f"wrote {out} ({len(labels)} images)")
        return
    if args.classes is None:
        raise ValueError("--classes all is for --npz evaluation sets; a grid needs a short list, e.g. 207,360,387")
    sample_grid(args.checkpoint, args.classes, args.per_class, args.out, cfg=args.cfg, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, **options)


def cmd_edit(args) -> None:
    """Zero-shot inpainting / outpainting / class-conditional editing of one image, as a before/after PNG."""
    import numpy as np
    from PIL import Image

    import arjax
    from arjax.sample import edit
    pipe = arjax.load(args.checkpoint)
    size = pipe.tokenizer.cfg.image_size
    source = edit.load_image(args.image, size)
    mask = edit.parse_mask(args.mask, size)
    out = pipe.edit(source[None], mask, label=args.label, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, **sampler_options(args))
    row = edit.before_after(source, mask, np.asarray(out[0]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(args.out)
    print(f"wrote {args.out}: source | region regenerated ({int(mask.sum())} of {mask.size} pixels) | edited, "
          f"class {args.label}")


def _train_stage(config: str, workdir: Path, overrides=()) -> dict:
    """Train one stage unless its workdir already holds the finished, exported model."""
    import json
    summary_file = workdir / "summary.json"
    if summary_file.exists() and (workdir / "model" / "arjax.json").exists():
        summary = json.loads(summary_file.read_text())
        if summary.get("finished"):
            print(f"{workdir}: already trained, reusing")
            return summary
    return _train(config, workdir, overrides)


def cmd_quickstart(args) -> None:
    """The main job: train a small tokenizer and a small VAR on the built-in dataset on CPU, sample a
    class-labelled grid, and score it with the built-in classifier. Rerunning resumes."""
    import json
    t0 = time.time()
    out = Path(args.out).absolute()
    print("== arjax quickstart: built-in dataset (10 shape x colour classes), CPU-sized ==")
    print("[1/4] tokenizer")
    _train_stage(f"{args.config}:tokenizer", out / "tokenizer", args.set_tokenizer)
    from arjax.config import load_config
    var_sets = [f"tokenizer_dir={out / 'tokenizer' / 'model'}", *args.set_var]
    gen_cfg = load_config(f"{args.config}:var", var_sets)  # the generator stage; its task names the member
    print(f"[2/4] {gen_cfg.task}")
    gen = _train_stage(f"{args.config}:var", out / gen_cfg.task, var_sets)
    print("[3/4] samples")
    import arjax
    pipe = arjax.load(gen["model_dir"])
    s = gen_cfg.sample  # the stage's own sampling settings
    grid = sample_grid(pipe, list(range(pipe.cfg.num_classes)), 8, out / "samples.png", cfg=s.cfg, top_k=s.top_k,
                       top_p=s.top_p, seed=0, batch_size=80)
    print("[4/4] evaluation")
    from arjax.eval.run import evaluate_pipeline, format_report
    report = evaluate_pipeline(pipe, per_class=args.eval_per_class, seed=1, cfg=s.cfg, top_k=s.top_k,
                               top_p=s.top_p, classifier_dir=out / "classifier")
    print(format_report(report))
    (out / "eval.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nquickstart done in {time.time() - t0:.0f}s")
    print(f"  samples grid   {grid}")
    print(f"  model          {gen['model_dir']}  (arjax.load it, or `arjax sample --checkpoint ...`)")
    print(f"  tensorboard    tensorboard --logdir {out}")


def cmd_eval(args) -> None:
    """Score class-conditional samples of a model trained on the built-in dataset."""
    import json

    import arjax
    from arjax.eval.classifier import get_classifier
    from arjax.eval.run import check_builtin_classes, evaluate_pipeline, format_report
    pipe = arjax.load(args.checkpoint)
    check_builtin_classes(pipe)  # a model of another dataset is named before any classifier is trained
    clf = get_classifier(int(pipe.tokenizer.cfg.image_size), args.classifier_dir)  # one load for both reports
    report = evaluate_pipeline(pipe, per_class=args.per_class, seed=args.seed, cfg=args.cfg, top_k=args.top_k,
                               top_p=args.top_p, classifier_dir=args.classifier_dir,
                               sample_options=sampler_options(args), classifier=clf)
    print(format_report(report))
    if args.by_scale:
        from arjax.eval.by_scale import format_scale_table, scale_diagnosis
        report["by_scale"] = scale_diagnosis(pipe, clf, count=report["num_samples"], seed=args.seed, cfg=args.cfg,
                                             top_k=args.top_k, top_p=args.top_p,
                                             sample_options=sampler_options(args))
        print(format_scale_table(report["by_scale"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from arjax import members
    from arjax.eval.fid.commands import add_eval_fid_parser, add_eval_recon_parser, add_eval_ref_parser
    p = argparse.ArgumentParser(prog="arjax", description="Autoregressive image generation in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert released PyTorch checkpoints")
    csub = c.add_subparsers(dest="member", required=True)
    for name in members.MEMBERS:  # each member with a converter registers its own subcommand
        if not members.member(name).converter:
            continue
        conv = importlib.import_module(members.member(name).converter)
        cp = csub.add_parser(name, help=conv.HELP)
        conv.add_arguments(cp)
        cp.add_argument("--out", required=True, help="output model directory (must not exist or be empty)")
        cp.set_defaults(fn=cmd_convert)

    i = sub.add_parser("init", help="write a freshly initialised model from a config")
    i.add_argument("--config", required=True, help="e.g. configs/var.py:tiny")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", required=True)
    i.set_defaults(fn=cmd_init)

    s = sub.add_parser("sample", help="sample a labelled PNG grid")
    s.add_argument("--checkpoint", required=True, help="model directory")
    s.add_argument("--classes", type=int_list, required=True, help="e.g. 207,360,387, or all (with --npz)")
    s.add_argument("--per-class", type=int, default=4)
    s.add_argument("--cfg", type=float, default=1.5)
    s.add_argument("--top-k", type=int, default=900)
    s.add_argument("--top-p", type=float, default=0.96)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--refiner", default=None, help="collaborative decoding (CoDe): a second model directory of the "
                   "same member and tokenizer (usually smaller) that samples the scales after --draft-scales")
    s.add_argument("--draft-scales", type=int, default=None, help="with --refiner: the number of first scales "
                   "this checkpoint (the drafter) samples")
    s.add_argument("--npz", default="", help="write every sample to this .npz (arr_0 uint8, class-major; "
                   "e.g. --classes all --per-class 50 for a 50k FID set); resumable")
    add_sampler_flags(s)
    s.set_defaults(fn=cmd_sample)

    ed = sub.add_parser("edit", help="zero-shot inpainting, outpainting or class-conditional editing")
    ed.add_argument("--checkpoint", required=True, help="model directory")
    ed.add_argument("--image", required=True, help="source image (centre-cropped and resized to the model size)")
    ed.add_argument("--mask", required=True, help="region to regenerate: box:x0,y0,x1,y1 in model pixels, or a "
                    "PNG whose white pixels are regenerated; a leading ~ inverts it (outpainting: ~box:8,8,24,24)")
    ed.add_argument("--label", type=int, required=True, help="class to generate the region as")
    ed.add_argument("--cfg", type=float, default=1.5)
    ed.add_argument("--top-k", type=int, default=900)
    ed.add_argument("--top-p", type=float, default=0.96)
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--out", default="edit.png", help="before/after PNG: source | masked | edited")
    add_sampler_flags(ed)
    ed.set_defaults(fn=cmd_edit)

    t = sub.add_parser("train", help="train (or resume) a tokenizer or a VAR from a config")
    t.add_argument("--config", required=True, help="e.g. configs/quickstart.py:tokenizer")
    t.add_argument("--workdir", required=True, help="run directory; an existing one is resumed")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--coordinator", default=None, help="multi-process GPU/CPU: host:port of process 0 "
                   "(or $ARJAX_COORDINATOR; TPU pods need none of these three)")
    t.add_argument("--num-processes", type=int, default=None, help="or $ARJAX_NUM_PROCESSES")
    t.add_argument("--process-id", type=int, default=None, help="or $ARJAX_PROCESS_ID")
    t.set_defaults(fn=cmd_train)

    pl = sub.add_parser("plan", help="per-device memory and FLOPs of a config's train step on a mesh; on a TPU "
                        "topology whether it fits the HBM, the largest per-chip batch that does, variants")
    pl.add_argument("--config", required=True, help="e.g. configs/imagenet.py:d16")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pl.add_argument("--mesh", default="", help="e.g. data=2,fsdp=8,tensor=1 (the config's mesh otherwise)")
    pl.add_argument("--devices", type=int, default=0, help="plan on this many fake CPU devices")
    pl.add_argument("--topology", default="", help="a TPU topology compiled ahead of time (needs libtpu): "
                    "v5e:4x4, v4:2x2x4, v5p:2x2x4, v6e:2x4, or a slice name: v5e-16, v5litepod-16, v4-32 (v4 and "
                    "v5p slice names count TensorCores, 2 per chip), v5p-32, v6e-8. Default: the config's "
                    "plan.topology if it has one, else this process's devices")
    pl.add_argument("--max-batch", action="store_true", help="also find the largest per-chip batch that fits "
                    "(--topology only; each candidate compiles in a fresh process, a few compiles in all)")
    pl.add_argument("--max-compiles", type=int, default=8, help="at most this many candidate compiles per "
                    "--max-batch search (default 8)")
    pl.add_argument("--variants", action="store_true", help="a table over model.remat off/on x attention "
                    "implementations (--variant-attn), one fresh-process compile per row")
    pl.add_argument("--variant-attn", default="xla,splash", help="attention implementations for --variants "
                    "(default xla,splash)")
    pl.add_argument("--hbm-gib", type=float, default=None, help="plan as if each chip let XLA use only this "
                    "many GiB of HBM (headroom; --topology only)")
    pl.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    pl.add_argument("--no-flops", action="store_true", help="do not count FLOPs (faster; the --max-batch "
                    "search's candidates use it)")
    pl.set_defaults(fn=cmd_plan)

    e = sub.add_parser("eval", help="evaluate: FID/sFID/IS/precision/recall (ADM), tokenizer reconstructions, "
                       "or classifier accuracy on the built-in dataset")
    esub = e.add_subparsers(dest="eval_kind", required=True)
    add_eval_fid_parser(esub)
    add_eval_recon_parser(esub)
    add_eval_ref_parser(esub)
    ec = esub.add_parser("classes", help="classifier accuracy and Frechet distance on the built-in dataset "
                         "(also `arjax eval --checkpoint ...`)")
    ec.add_argument("--checkpoint", required=True, help="model directory trained on the synthetic dataset")
    ec.add_argument("--per-class", type=int, default=50)
    ec.add_argument("--cfg", type=float, default=1.5)
    ec.add_argument("--top-k", type=int, default=900)
    ec.add_argument("--top-p", type=float, default=0.96)
    ec.add_argument("--seed", type=int, default=1)
    ec.add_argument("--classifier-dir", default=None, help="where the classifier is cached (trained if absent)")
    ec.add_argument("--out", default=None, help="write the metrics as JSON")
    ec.add_argument("--by-scale", action="store_true", help="also: accuracy when the first k scales come from "
                    "real images and the rest is sampled, for every k (where the generator loses the class)")
    add_sampler_flags(ec)
    ec.set_defaults(fn=cmd_eval)

    q = sub.add_parser("quickstart", help="the main job on CPU (see README)")
    q.add_argument("--out", default="quickstart")
    q.add_argument("--config", default="configs/quickstart.py", help="file with tokenizer and var stages")
    q.add_argument("--eval-per-class", type=int, default=50)
    q.add_argument("--set-tokenizer", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--set-var", action="append", default=[], metavar="KEY=VALUE")
    q.set_defaults(fn=cmd_quickstart)
    return p


def main(argv=None) -> int:
    from arjax.train.losses import NonFiniteLoss
    from arjax.train.trainer import PeerFailure
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"] and len(argv) > 1 and argv[1].startswith("--") and argv[1] != "--help":
        argv.insert(1, "classes")  # `arjax eval --checkpoint ...`: the built-in dataset's evaluation, as before
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except NonFiniteLoss as e:
        print(f"arjax {args.command}: stopped: {e}", file=sys.stderr)
        return 3
    except PeerFailure as e:
        sys.stdout.flush()
        print(f"\narjax {args.command}: stopped: {e}", file=sys.stderr, flush=True)
        os._exit(4)  # skip jax.distributed's shutdown barrier: it would wait for the dead process
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError) as e:
        print(f"arjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
