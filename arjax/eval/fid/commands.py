"""The `arjax eval fid | recon | ref` subcommands (flags and what they run)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

RESIZE_HELP = ("how images reach 299 px: tf1 (default here) is the bilinear resize inside the ADM evaluator's "
               "TF graph, for numbers comparable with papers; pytorch-fid is F.interpolate's, what pytorch-fid "
               "users get (see README)")


def _add_protocol_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", required=True, help="reference batch, ADM format: arr_0 uint8 images, optional "
                   "mu/sigma/mu_s/sigma_s (e.g. VIRTUAL_imagenet256_labeled.npz)")
    p.add_argument("--inception", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   "(or a .safetensors of its state dict)")
    p.add_argument("--resize", choices=("tf1", "pytorch-fid"), default="tf1", help=RESIZE_HELP)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="Inception precision (bfloat16: faster on accelerators; its FID drift is in the README)")
    p.add_argument("--split-size", type=int, default=5000, help="Inception Score split (ADM: 5000)")
    p.add_argument("--pr-batch", type=int, default=10000, help="precision/recall distance block (ADM: 10000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (a killed run loses at most one)")
    p.add_argument("--inception-batch", type=int, default=50, help="images per Inception call")
    p.add_argument("--out", default=None, help="run directory: report.json, grid.png, resumable parts "
                   "(default: eval_fid/ or eval_recon/ under the current directory)")


def add_eval_fid_parser(sub) -> None:
    from arjax.cli import add_sampler_flags
    f = sub.add_parser("fid", help="FID, sFID, IS, precision, recall as OpenAI's ADM evaluator computes them")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model directory: sample --num class-balanced images and score them")
    src.add_argument("--npz", help="score this ADM-format sample batch (any system's, e.g. the official code's)")
    _add_protocol_flags(f)
    f.add_argument("--num", type=int, default=50_000, help="samples (with --checkpoint)")
    f.add_argument("--cfg", type=float, default=1.5)
    f.add_argument("--top-k", type=int, default=900)
    f.add_argument("--top-p", type=float, default=0.96)
    f.add_argument("--seed", type=int, default=0)
    add_sampler_flags(f)
    f.set_defaults(fn=cmd_eval_fid)


def add_eval_recon_parser(sub) -> None:
    r = sub.add_parser("recon", help="tokenizer reconstructions of the reference: rFID, PSNR, SSIM (LPIPS)")
    r.add_argument("--checkpoint", required=True, help="tokenizer (or full model) directory")
    _add_protocol_flags(r)
    r.add_argument("--num", type=int, default=None, help="reconstruct the first N reference images (default all)")
    r.add_argument("--lpips-vgg", default="", help="torchvision vgg16-397923af.pth, for LPIPS")
    r.add_argument("--lpips-lin", default="", help="the lpips package's weights/v0.1/vgg.pth, for LPIPS")
    r.set_defaults(fn=cmd_eval_recon)


def add_eval_ref_parser(sub) -> None:
    r = sub.add_parser("ref", help="write an ADM-format reference batch from your images")
    r.add_argument("--source", required=True, help="an image folder (root/<class>/<image> or flat), a TFDS "
                   "split such as imagenet2012:validation, an .npz, or builtin:N (N images of the built-in dataset)")
    r.add_argument("--size", type=int, required=True, help="image side; centre-cropped as ADM's reference batches")
    r.add_argument("--out", required=True, help="output .npz")
    r.add_argument("--limit", type=int, default=None, help="take the first N images")
    r.add_argument("--inception", default="", help="also store mu/sigma/mu_s/sigma_s computed with these weights")
    r.add_argument("--resize", choices=("tf1", "pytorch-fid"), default="tf1", help=RESIZE_HELP)
    r.add_argument("--inception-batch", type=int, default=50, help="images per Inception call")
    r.set_defaults(fn=cmd_eval_ref)


def _net(args):
    from arjax.eval.fid.inception import Inception
    return Inception.from_file(args.inception, resize=args.resize, dtype=args.dtype, batch_size=args.inception_batch)


def _protocol(args):
    from arjax.eval.fid.evaluate import Protocol
    if args.split_size < 1 or args.pr_batch < 1:
        raise ValueError("--split-size and --pr-batch must be >= 1")
    return Protocol(split_size=args.split_size, pr_batch=args.pr_batch)


def _print(report) -> None:
    from arjax.eval.fid.evaluate import format_report
    if report is not None:  # process 0 of a multi-process run reports
        print(format_report(report))


def cmd_eval_fid(args) -> None:
    from arjax import parallel
    parallel.initialize()  # a multi-process run (env vars / TPU pod) shares the work
    from arjax.cli import sampler_options
    from arjax.eval.fid import evaluate
    net, protocol = _net(args), _protocol(args)
    out = args.out or "eval_fid"
    if args.npz:
        report = evaluate.evaluate_npz(args.npz, args.ref, net, out, protocol=protocol, batch_size=args.batch_size)
    else:
        import arjax
        pipe = arjax.load(args.checkpoint)
        report = evaluate.evaluate_checkpoint(
            pipe, args.ref, net, out, num=args.num, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed, sample_options=sampler_options(args), source=str(Path(args.checkpoint).absolute()),
            protocol=protocol, batch_size=args.batch_size)
    _print(report)


def cmd_eval_recon(args) -> None:
    from arjax import parallel
    parallel.initialize()
    import arjax
    from arjax.eval.fid import evaluate
    if bool(args.lpips_vgg) != bool(args.lpips_lin):
        raise ValueError("LPIPS needs both --lpips-vgg and --lpips-lin")
    lpips = None
    if args.lpips_vgg:
        from arjax.nn.lpips import load_lpips
        lpips = load_lpips(args.lpips_vgg, args.lpips_lin)
    tokenizer = arjax.load_tokenizer(args.checkpoint)
    report = evaluate.evaluate_reconstructions(
        tokenizer, args.ref, _net(args), args.out or "eval_recon", num=args.num, lpips=lpips,
        source=str(Path(args.checkpoint).absolute()), protocol=_protocol(args), batch_size=args.batch_size)
    _print(report)


def cmd_eval_ref(args) -> None:
    from arjax.eval.fid import reference
    t0 = time.time()
    net = None
    if args.inception:
        from arjax.eval.fid.inception import Inception
        net = Inception.from_file(args.inception, resize=args.resize, batch_size=args.inception_batch)
    out = reference.make_reference(args.source, args.out, args.size, limit=args.limit, net=net)
    print(f"wrote {out} in {time.time() - t0:.0f}s")
