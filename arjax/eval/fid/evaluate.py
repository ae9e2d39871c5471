"""`arjax eval fid` / `arjax eval recon`: the ADM evaluator's metrics in one command, streamed,
sharded over all devices and processes, and resumable.

Images (sampled from a model, read from an ADM-format npz, or reconstructed by a tokenizer) go into
Inception features batch by batch, and each batch's features become one part file (arjax.parts): 50k
images are never held in memory, every process takes its share of the batches, and a killed run resumes
losing at most the batch in flight. The reference batch's features are cached per (file, weights,
resize, dtype) under $ARJAX_CACHE/fid (default ~/.cache/arjax/fid). Process 0 then computes the metrics
exactly as ADM does and writes OUT/report.json (metrics, settings, versions, seconds) and OUT/grid.png.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from arjax import parallel
from arjax import parts as parts_lib
from arjax.eval.fid import metrics
from arjax.eval.fid.batches import ImageBatch, open_batch

GRID_CLASSES, GRID_PER_CLASS = 8, 8
PAPER_SAMPLES = 50_000  # the protocol's sample count (ImageNet 256 / 512 tables)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The evaluator's knobs: IS split size, precision/recall batch (ADM: 5000, 10000) and k (3)."""
    split_size: int = 5000
    pr_batch: int = 10000
    k: int = 3


def cache_root() -> Path:
    return Path(os.environ.get("ARJAX_CACHE", Path.home() / ".cache" / "arjax")) / "fid"


# ---- features of a stream of images ---------------------------------------------------------------
def stream_features(parts, total: int, batch_size: int, produce: Callable, net, *, desc: str,
                    progress: bool = True) -> dict | None:
    """Inception features of `produce(start, stop) -> (uint8 images, {extra per-image arrays})` over
    range(total), one part per batch. Returns (on process 0; None elsewhere) pool3 (total, 2048), the
    spatial features' (mu, sigma) streamed over the parts, and every extra array concatenated."""
    def compute(start, stop):
        images, extra = produce(start, stop)
        out = net(images)
        return {"pool3": out["pool3"], "spatial": out["spatial"], **extra}

    files = parts_lib.run_parts(parts, total, batch_size, compute, desc=desc, progress=progress)
    if not parallel.is_main_process():
        return None
    spatial, gathered = metrics.RunningStatistics(), {}
    for f in files:
        part = parts_lib.load_part(f)
        spatial.update(part.pop("spatial"))
        for k, v in part.items():
            gathered.setdefault(k, []).append(v)
    out = {k: np.concatenate(v) for k, v in gathered.items()}
    out["spatial_stats"] = spatial.result()
    return out


def reference_features(ref: ImageBatch, net, *, batch_size: int = 100, progress: bool = True) -> dict | None:
    """pool3 features of the reference's arr_0 (precision/recall need them) and its statistics; the
    npz's own mu/sigma (mu_s/sigma_s) take precedence when present, as in ADM. Cached on disk."""
    st = Path(ref.path).stat()
    key = hashlib.sha256(f"{Path(ref.path).absolute()}|{st.st_size}|{st.st_mtime_ns}|{net.fingerprint}".encode())
    cache = cache_root() / f"ref-{key.hexdigest()[:20]}"
    done = cache / "features.npz"
    if done.is_file():
        feats = parts_lib.load_part(done) if parallel.is_main_process() else None
    else:
        raw = stream_features(cache / "parts", ref.num, batch_size,
                              lambda s, e: (ref.read(s, e), {}), net, desc="reference features", progress=progress)
        feats = None
        if raw is not None:
            feats = {"pool3": raw["pool3"], "mu_s": raw["spatial_stats"][0], "sigma_s": raw["spatial_stats"][1]}
            tmp = cache / "features.tmp.npz"
            with open(tmp, "wb") as f:
                np.savez(f, **feats)
            os.replace(tmp, done)
            shutil.rmtree(cache / "parts", ignore_errors=True)
        parallel.barrier("arjax: reference features cached")
    if feats is None:
        return None
    given = ref.statistics()
    return {"pool3": feats["pool3"],
            "pool3_stats": given["pool3"] or metrics.statistics(feats["pool3"]),
            "spatial_stats": given["spatial"] or (feats["mu_s"], feats["sigma_s"]),
            "precomputed_statistics": [k for k, v in given.items() if v is not None], "cache": str(cache)}


def check_protocol(num: int, ref: ImageBatch, protocol: Protocol) -> None:
    """Refuse what cannot be scored before any image is made, not after hours of sampling."""
    from arjax.eval.fid.inception import FEATURE_DIMS
    for kind, stats in ref.statistics().items():
        if stats is not None and len(stats[0]) != FEATURE_DIMS[kind]:
            keys = "mu/sigma" if kind == "pool3" else "mu_s/sigma_s"
            raise ValueError(f"{ref.path}: its {keys} have {len(stats[0])} dimensions; the FID Inception's "
                             f"{kind} features have {FEATURE_DIMS[kind]} (statistics of another network?)")
    ref_num = ref.num
    if num < protocol.split_size:
        raise ValueError(f"{num} samples are fewer than one Inception Score split of {protocol.split_size}: "
                         f"lower --split-size (ADM: 5000 of 50000)")
    for what, n in (("samples", num), ("reference images", ref_num)):
        if n < protocol.k + 1:
            raise ValueError(f"{n} {what}: precision/recall need at least k + 1 = {protocol.k + 1}")


def score(sample: dict, ref: dict, net, protocol: Protocol) -> dict:
    """The five numbers, computed as ADM's evaluator does (sample statistics first in the distance).
    A distance whose matrix root fails (e.g. a few samples: singular covariances) is reported as None
    with the reason under "errors", so the other numbers of a long run are not lost."""
    pool3 = sample["pool3"]
    precision, recall = metrics.precision_recall(ref["pool3"], pool3, k=protocol.k, batch_size=protocol.pr_batch)
    out, errors = {}, {}
    for name, a, b in (("fid", metrics.statistics(pool3), ref["pool3_stats"]),
                       ("sfid", sample["spatial_stats"], ref["spatial_stats"])):
        try:
            out[name] = metrics.frechet_distance(a, b)
        except ValueError as e:
            out[name], errors[name] = None, str(e)
    out.update(inception_score=metrics.inception_score(pool3, net.softmax_w, split_size=protocol.split_size),
               precision=precision, recall=recall)
    return {**out, "errors": errors} if errors else out


# ---- one run directory ----------------------------------------------------------------------------
def _run_dir(out, settings: dict) -> Path:
    """OUT, checked to belong to a run with the same settings when it is resumed."""
    out = Path(out)
    if parallel.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    parallel.barrier("arjax: run directory made")
    run = out / "run.json"
    if run.is_file():
        old = json.loads(run.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds an evaluation with other settings ({shown}); give another --out, "
                             f"or delete {out} to start over")
    elif parallel.is_main_process():
        run.write_text(json.dumps(settings, indent=1))
    return out


def _versions() -> dict:
    import flax
    import jax
    import jaxlib
    import scipy

    import arjax
    return {"arjax": arjax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), "platform": jax.devices()[0].platform,
            "devices": jax.device_count(), "processes": jax.process_count()}


def _write_report(out: Path, report: dict) -> dict:
    report = {**report, "versions": _versions(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    report["report_json"] = str(out / "report.json")
    return report


def _common_settings(net, ref: ImageBatch, protocol: Protocol, batch_size: int) -> dict:
    return {"ref": str(Path(ref.path).absolute()), "ref_num": ref.num, "inception": net.fingerprint,
            "resize": net.resize, "dtype": net.dtype, "batch_size": batch_size, **dataclasses.asdict(protocol)}


# ---- the three evaluations ------------------------------------------------------------------------
def _evaluate(out, settings: dict, num: int, batch_size: int, produce: Callable, ref: ImageBatch, net,
              protocol: Protocol, finish: Callable, *, desc: str, progress: bool) -> dict | None:
    """What every evaluation does: check the protocol, claim the run directory, stream the features of
    `produce`, get the reference's, score, then `finish(result, sample, grid_path) -> (result, grid)`
    adds its own numbers and grid, and the report is written. Returns it on process 0, else None."""
    t0 = time.time()
    check_protocol(num, ref, protocol)
    settings = {**settings, **_common_settings(net, ref, protocol, batch_size)}
    out = _run_dir(out, settings)
    sample = stream_features(out / "parts", num, batch_size, produce, net, desc=desc, progress=progress)
    t1 = time.time()
    reference = reference_features(ref, net, progress=progress)
    if sample is None:
        return None
    t2 = time.time()
    result, grid = finish(score(sample, reference, net, protocol), sample, out / "grid.png")
    seconds = {desc: t1 - t0, "reference features": t2 - t1, "metrics": time.time() - t2, "total": time.time() - t0}
    return _write_report(out, {**result, "settings": settings, "grid_png": str(grid),
                               "reference": _reference_info(reference), "seconds": seconds})


def evaluate_npz(samples, ref, net, out, *, protocol: Protocol = Protocol(), batch_size: int = 100,
                 progress: bool = True) -> dict | None:
    """Score any system's ADM-format sample batch (e.g. the official PyTorch code's) against `ref`."""
    from arjax.viz import save_grid
    batch, ref = open_batch(samples), open_batch(ref)

    def finish(result, sample, grid):
        return result, save_grid(grid, batch.read(0, min(64, batch.num)), per_row=8)

    return _evaluate(out, {"mode": "npz", "samples": str(Path(samples).absolute()), "num": batch.num}, batch.num,
                     batch_size, lambda s, e: (batch.read(s, e), {}), ref, net, protocol, finish,
                     desc="sample features", progress=progress)


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
    """Class-major labels with every class getting num / num_classes (rounded) samples: floor(i K / N).
    For num = K * per_class this is `arjax sample --npz`'s order, so a seed gives the same images."""
    return (np.arange(num, dtype=np.int64) * num_classes // num).astype(np.int64)


def grid_indices(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """(indices, per row): the first samples of up to GRID_CLASSES classes spread over the label range,
    the same number of each (at most GRID_PER_CLASS), so that each grid row is one class."""
    classes = np.unique(np.linspace(0, num_classes - 1, min(GRID_CLASSES, num_classes)).round().astype(int))
    per_class = min(GRID_PER_CLASS, min(int(np.sum(labels == c)) for c in classes))
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes]), per_class


def evaluate_checkpoint(pipe, ref, net, out, *, num: int = 50_000, cfg: float = 1.5, top_k: int = 900,
                        top_p: float = 0.96, seed: int = 0, sample_options=None, source: str = "",
                        protocol: Protocol = Protocol(), batch_size: int = 64, progress: bool = True) -> dict | None:
    """Sample `num` class-balanced images from `pipe` and score them: samples go straight into features."""
    from arjax.sample.bulk import sample_pixels
    from arjax.viz import save_grid
    options = dict(sample_options or {})
    num_classes = int(pipe.cfg.num_classes)
    if num < num_classes:
        raise ValueError(f"--num {num} is fewer than the model's {num_classes} classes")
    labels = balanced_labels(num, num_classes)
    shown, per_row = grid_indices(labels, num_classes)

    def produce(start, stop):
        images = sample_pixels(pipe, labels, start, stop, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed, **options)
        keep = shown[(shown >= start) & (shown < stop)]
        return images, {"grid": images[keep - start], "grid_index": keep}

    def finish(result, sample, grid):
        order = np.argsort(sample["grid_index"])
        return result, save_grid(grid, sample["grid"][order], labels[sample["grid_index"][order]],
                                 per_row=per_row, class_names=pipe.class_names)

    settings = {"mode": "checkpoint", "checkpoint": source, "num": num, "num_classes": num_classes, "cfg": cfg,
                "top_k": top_k, "top_p": top_p, "seed": seed, "sample_options": options}
    return _evaluate(out, settings, num, batch_size, produce, open_batch(ref), net, protocol, finish,
                     desc="sampling + features", progress=progress)


def evaluate_reconstructions(tokenizer, ref, net, out, *, num: int | None = None, lpips=None, source: str = "",
                             protocol: Protocol = Protocol(), batch_size: int = 64,
                             progress: bool = True) -> dict | None:
    """rFID (and sFID, IS, precision/recall) of a tokenizer's reconstructions of the reference images
    against the reference, with PSNR, SSIM and, given `lpips=(graphdef, params)`, LPIPS per image."""
    from arjax.data.transforms import to_pm1
    from arjax.eval.image_quality import psnr, ssim
    from arjax.sample.bulk import to_pixels
    from arjax.viz import save_grid
    ref = open_batch(ref)
    size = int(tokenizer.cfg.image_size)
    if ref.image_shape[:2] != (size, size):
        raise ValueError(f"{ref.path} holds {ref.image_shape[0]}x{ref.image_shape[1]} images; this tokenizer "
                         f"takes {size}x{size}: write a reference at its size with `arjax eval ref --size {size}`")
    num = ref.num if num is None else num
    if not 0 < num <= ref.num:
        raise ValueError(f"--num {num}: the reference holds {ref.num} images")

    def produce(start, stop):
        real = ref.read(start, stop)
        rec = to_pixels((np.asarray(tokenizer.decode(tokenizer.encode(to_pm1(real)))) + 1) / 2)
        extra = {"psnr": psnr(rec, real), "ssim": ssim(rec, real)}
        if lpips is not None:
            from arjax.nn.lpips import lpips_distance
            extra["lpips"] = np.asarray(lpips_distance(*lpips, to_pm1(rec), to_pm1(real)))
        if start == 0:
            extra["grid"] = np.concatenate([real[:8], rec[:8]])
        return rec, extra

    def finish(result, sample, grid):
        result = {"rfid": result.pop("fid"), **result,
                  **{k: float(np.mean(sample[k])) for k in ("psnr", "ssim", "lpips") if k in sample}}
        shown = sample["grid"]
        return result, save_grid(grid, shown, per_row=len(shown) // 2, row_names=["original", "reconstructed"])

    settings = {"mode": "recon", "tokenizer": source, "num": num, "lpips": lpips is not None}
    return _evaluate(out, settings, num, batch_size, produce, ref, net, protocol, finish,
                     desc="reconstructions + features", progress=progress)


def _reference_info(reference: dict) -> dict:
    return {"num": len(reference["pool3"]), "precomputed_statistics": reference["precomputed_statistics"],
            "feature_cache": reference["cache"]}


def format_report(report: dict) -> str:
    names = [("fid", "FID"), ("rfid", "rFID"), ("sfid", "sFID"), ("inception_score", "Inception Score"),
             ("precision", "precision"), ("recall", "recall"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"),
             ("lpips", "LPIPS")]
    lines = [f"{label:<16s} {report[k]:.4f}" for k, label in names if report.get(k) is not None]
    lines += [f"{k}: not computed: {why}" for k, why in report.get("errors", {}).items()]
    s = report["settings"]
    lines.append(f"({s['num']} images vs {report['reference']['num']} reference images, Inception resize "
                 f"{s['resize']}, {s['dtype']}; {report['seconds']['total']:.0f}s)")
    if s["mode"] != "recon" and s["num"] < PAPER_SAMPLES:
        lines.append(f"note: papers report {PAPER_SAMPLES} samples; FID is biased upwards at fewer, so this "
                     f"number compares only with others at {s['num']}")
    lines += [f"grid: {report['grid_png']}", f"report: {report['report_json']}"]
    return "\n".join(lines)
