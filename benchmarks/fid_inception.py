"""FID Inception-v3 feature throughput (fp32 / bf16), the time of a full ADM evaluation, and the FID
drift of bf16 against fp32.

    python benchmarks/fid_inception.py                                   # GPU/TPU: batches 100, 250
    python benchmarks/fid_inception.py --batch-sizes 4 8 --steps 2 --fid-images 48   # a CPU smoke run
    python benchmarks/fid_inception.py --weights pt_inception-2015-12-05-6726825d.pth

Throughput is `Inception(images)` end to end on 256 x 256 uint8 input (host -> device copy, resize to 299,
network, features back to the host), over --steps full chunks after one untimed call that compiles; the
extrapolated time is the Inception part of a full ADM evaluation: 50,000 samples + 10,000 reference
images (the reference batch's statistics usually come precomputed: then only the 50,000 count).
Without --weights the fixture's random weights (shared/fixtures/fid/make_weights.py) are used: the
timing is the same, the drift numbers only indicate the size of bf16 rounding effects.

The metric stage is timed on its real sizes: one 2048-d Frechet distance (scipy's sqrtm of a 2048 x 2048
product; an evaluation computes two, FID and sFID) and one precision/recall distance block of --pr-batch
x --pr-batch 2048-d points; with 10k reference and 50k sample features an evaluation computes 1 + 25
radius blocks and 5 comparison blocks (31 in all). The full evaluation's time is extrapolated from these
and the Inception throughput (sampling, which depends on the model, not included).

FID drift: two image sets (smooth random colour fields, set B with extra bright discs), features in fp32
and bf16; printed are the Frechet distance between the fp32 and bf16 pool3 features of the same images
and |FID_bf16(A, B) - FID_fp32(A, B)| (arjax.eval.fid: ADM's formula, float64 statistics).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from arjax.eval import fid
from arjax.eval.fid.inception import Inception

FIXTURES = Path(os.environ.get("ARJAX_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
FIXTURE = FIXTURES / "fid" / "make_weights.py"
ADM_IMAGES = 50_000 + 10_000


def load_net(weights, **kw) -> Inception:
    if weights:
        return Inception.from_file(weights, **kw)
    spec = importlib.util.spec_from_file_location("fid_make_weights", FIXTURE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Inception.from_state_dict(mod.make_weights(0), **kw)


def image_set(n: int, size: int, seed: int, discs: bool) -> np.ndarray:
    """Smooth random colour fields (bilinear upsampling of 8x8 noise), optionally with a bright disc each."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 8, 8, 3))
    t = np.linspace(0, 7, size)
    i0 = np.minimum(t.astype(int), 6)
    f = (t - i0)[:, None]
    rows = coarse[:, i0] * (1 - f)[None, :, None] + coarse[:, i0 + 1] * f[None, :, None]
    img = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    if discs:
        yy, xx = np.mgrid[:size, :size]
        for k in range(n):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = size * rng.uniform(0.1, 0.25)
            img[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(200, 255, 3)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def metric_seconds(pr_batch: int) -> tuple[float, float]:
    """(seconds of one 2048-d Frechet distance, seconds of one pr_batch x pr_batch distance block)."""
    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal((3000, 2048))).astype(np.float32)
    stats_a, stats_b = fid.statistics(a), fid.statistics(a[::-1] * 1.1)
    t = time.perf_counter()
    fid.frechet_distance(stats_a, stats_b)
    sqrtm = time.perf_counter() - t
    pts = np.abs(rng.standard_normal((pr_batch, 2048))).astype(np.float32)
    fid.precision_recall(pts, pts[: pr_batch // 2], batch_size=pr_batch)  # compiles
    t = time.perf_counter()
    fid.precision_recall(pts[:pr_batch], pts[:pr_batch], batch_size=pr_batch)  # 2 radius + 1 comparison blocks
    return sqrtm, (time.perf_counter() - t) / 3


def throughput(net: Inception, steps: int, size: int) -> tuple[float, float]:
    """(compile + first call seconds, images per second) over `steps` full chunks."""
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, (net.batch_size, size, size, 3), np.uint8)
    t = time.perf_counter()
    net(chunk)
    first = time.perf_counter() - t
    images = np.concatenate([chunk] * steps)
    t = time.perf_counter()
    net(images)
    return first, len(images) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="pt_inception-2015-12-05-6726825d.pth or .safetensors")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 100 250 (8 16 on CPU)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=None, help="timed chunks per row (default 10, 2 on CPU)")
    ap.add_argument("--size", type=int, default=256, help="input image size")
    ap.add_argument("--resize", default="pytorch-fid", choices=["pytorch-fid", "tf1"])
    ap.add_argument("--pr-batch", type=int, default=10000, help="precision/recall block (ADM: 10000)")
    ap.add_argument("--fid-images", type=int, default=None,
                    help="images per set for the drift (default 1000, 64 on CPU)")
    args = ap.parse_args(argv)
    cpu = jax.default_backend() == "cpu"
    batch_sizes = args.batch_sizes or ([8, 16] if cpu else [100, 250])
    steps = args.steps or (2 if cpu else 10)
    n_fid = args.fid_images or (64 if cpu else 1000)
    devs = jax.local_devices()
    print(f"# FID Inception benchmark, {datetime.date.today()}, {len(devs)} x {devs[0].platform} "
          f"{devs[0].device_kind}, jax {jax.__version__}, {args.size}px uint8 input, resize {args.resize}, "
          f"weights {args.weights or 'random (fixture make_weights(0))'}")
    print("| dtype | batch | first call s (compile) | img/s | ADM eval (60k images) |")
    print("|---|---|---|---|---|")
    best_ips = 0.0
    for dtype in args.dtypes:
        for bs in batch_sizes:
            net = load_net(args.weights, resize=args.resize, dtype=dtype, batch_size=bs)
            first, ips = throughput(net, steps, args.size)
            print(f"| {dtype} | {bs} | {first:.1f} | {ips:.1f} | {ADM_IMAGES / ips / 60:.1f} min |", flush=True)
            best_ips = max(best_ips, ips)

    sqrtm, block = metric_seconds(args.pr_batch)
    blocks = 31 * (10000 / args.pr_batch) ** 2
    metrics_s = 2 * sqrtm + blocks * block
    print(f"\n# metric stage: one 2048-d Frechet distance {sqrtm:.1f} s, one {args.pr_batch}^2 distance block "
          f"{block:.2f} s; FID + sFID + precision/recall of 50k vs 10k: {metrics_s / 60:.1f} min")
    print(f"# full ADM evaluation at the best rate above (sampling not included): "
          f"{(ADM_IMAGES / best_ips + metrics_s) / 60:.1f} min")

    bs = batch_sizes[-1]
    set_a, set_b = image_set(n_fid, args.size, 1, False), image_set(n_fid, args.size, 2, True)
    feats = {}
    for dtype in ("float32", "bfloat16"):
        net = load_net(args.weights, resize=args.resize, dtype=dtype, batch_size=bs)
        feats[dtype] = [net(s)["pool3"] for s in (set_a, set_b)]
    rel = np.abs(feats["bfloat16"][0] - feats["float32"][0]).max() / np.abs(feats["float32"][0]).max()
    print(f"\n# bf16 vs fp32 drift, {n_fid} images per set, pool3 features, float64 FID")
    print(f"max abs pool3 diff / max abs pool3 (set A): {rel:.2e}\n")
    fd = lambda a, b: fid.frechet_distance(fid.statistics(a), fid.statistics(b))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer images than dimensions: singular products
        same = fd(feats["float32"][0], feats["bfloat16"][0])
        fid32, fid16 = fd(*feats["float32"]), fd(*feats["bfloat16"])
    diff = abs(fid16 - fid32)
    print("| FD(fp32, bf16) same images (A) | FID_fp32(A, B) | FID_bf16(A, B) | abs diff | relative |")
    print("|---|---|---|---|---|")
    print(f"| {same:.4g} | {fid32:.4f} | {fid16:.4f} | {diff:.3g} | {diff / fid32:.2e} |")


if __name__ == "__main__":
    main()
