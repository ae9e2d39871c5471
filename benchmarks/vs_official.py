"""Side-by-side speed and memory of arjax's VAR and the official PyTorch VAR (FoundationVision/VAR) on CPU.

Same model (VAR depth d: width 64 d, d heads, MLP ratio 4; 256 px, patch_nums 1..16 (L = 680), vocab 4096,
Cvae 32, 1000 classes, share_quant_resi 4, VQVAE base channels --tokenizer-ch), same batch, float32, the
same thread count and the same inputs (labels and tokens drawn from numpy with --seed on both sides),
randomly initialised (no checkpoint). For each phase and depth the driver starts two fresh worker
processes, one per side; each builds its model, runs its first call (compile / warm-up) and waits. The
driver then asks them in turn (official, arjax, official, ...) for --steps timed calls, --rounds times,
so that slow drifts of the machine hit both sides alike, and prints the median and range of each side,
the speed ratio official ms / arjax ms (> 1: arjax is faster) and each worker's peak RSS (the process's
max resident set, fresh per phase).

Phases:

* train: one optimiser step from token indices: teacher-forcing input from the indices (tokenizer's
  `idxBl_to_var_input`), VAR forward in train mode (class dropout 0.1), token cross-entropy with uniform
  1/L weights (sum over tokens, mean over the batch), backward, global-norm clipping at 2, AdamW
  (0.9, 0.95, wd 0.05 on matrices only). Official: the step of its trainer.py (`VARTrainer.train_step`,
  `AmpOptimizer.backward_clip_step`) without AMP, with train.py's fused AdamW; its stochastic depth
  (drop_path_rate 0.1 d / 24) is on, as in training. arjax: `arjax.train.trainer.make_train_step`, the
  jitted, donated step `arjax train` runs, on configs/imagenet.py:d16 resized to the depth.
  NOT included on either side: encoding images into tokens (the official trainer runs its VQVAE
  encoder in every step; arjax trains from cached tokens), the data loader, the lr schedule's host code.
* sample: the full class-conditional sampler, CFG 1.5, top-k 900, top-p 0.96, all 10 scales with a
  KV cache, conditional and unconditional rows as one batch of 2B, then the tokenizer's decoder to
  images. Official: `VAR.autoregressive_infer_cfg(..., more_smooth=False)`; arjax:
  `arjax.build(meta).sample(...)`, timed up to the images in host memory (np.asarray).

Setup of the official side (never vendored into this project; the worker only puts it on sys.path):

    # a checkout of FoundationVision/VAR (GitHub) at /path/to/VAR, and torch in its own virtualenv
    python -m venv /path/to/venv && /path/to/venv/bin/pip install torch numpy huggingface_hub
    #   (a CPU-only torch wheel is enough and much smaller)

Run (from the repository root; arjax and jax in the current interpreter, torch in the venv):

    python benchmarks/vs_official.py --official /path/to/VAR --official-python /path/to/venv/bin/python
    python benchmarks/vs_official.py ... --depths 2 --batch 2 --rounds 2 --steps 1     # smoke run
    python benchmarks/vs_official.py --table runs/vs_official.json                     # reprint a table

The official worker imports only torch, numpy, the standard library and the official code; the arjax
worker runs with JAX_PLATFORMS=cpu (the comparison is on the CPU both sides share). Threads: torch gets
set_num_threads(--threads) and one inter-op thread; XLA gets
XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N" when --threads is not the
core count. Each worker also reports the cores it kept busy (CPU seconds / wall seconds of the timed
calls) so that a thread setting one side ignores shows up.

Protocol (internal): workers answer JSON lines on stdout (everything else they print goes to stderr):
{"ready": ..., info} once built and warmed up; {"times": [s, ...]} per {"op": "run", "steps": n};
{"peak_rss": bytes, ...info} to {"op": "stop"}, then they exit; {"error": text} if anything fails.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# Nothing heavy at module level: the official worker runs in a venv without jax, and the driver stays
# small so that its RSS (inherited by ru_maxrss of the workers it starts, see max_rss_bytes) is negligible.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SEQ_LEN = sum(p * p for p in PATCH_NUMS)  # 680
VOCAB, CVAE, NUM_CLASSES, SHARE_QUANT_RESI = 4096, 32, 1000, 4
CFG, TOP_K, TOP_P = 1.5, 900, 0.96
PHASES = ("train", "sample")
# Unrolled, XLA:CPU fuses the residual stream's chain of adds into every layer's backward and recomputes
# it there (O(depth^2)); scanned, the loop boundary stops that: VAR-d16 batch 2 step 39-44 s -> 24 s under
# the same background load, d4 batch 8 2.7 -> 3.1 s (measured 2026-12-03). Hence on from this depth.
SCAN_FROM_DEPTH = 8
MiB = 2 ** 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, help="checkout of FoundationVision/VAR (holds models/, dist.py)")
    p.add_argument("--official-python", default=sys.executable,
                   help="interpreter with torch for the official side (default: this one)")
    p.add_argument("--depths", default="4,16", help="comma-separated VAR depths (default 4,16)")
    p.add_argument("--phases", default="train,sample", help="comma-separated, of train,sample (default both)")
    p.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    p.add_argument("--tokenizer-ch", type=int, default=32,
                   help="VQVAE base channels, a multiple of 32 (default 32; the released tokenizer has 160)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--steps", type=int, default=2, help="timed calls per round (default 2)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls after building, the first of which compiles (default 1; at least 1 runs)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per side (default: all cores)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing on both sides (default 0.0, the official recipe's "
                        "--ls and configs/imagenet.py's value)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan-layers", choices=("auto", "on", "off"), default="auto",
                   help="arjax train step: model.scan_layers (one block scanned over the stacked layers, as "
                        "configs/imagenet.py trains); auto = on from depth %d (default auto)" % SCAN_FROM_DEPTH)
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds to wait for any one answer of a worker, build and compile included (default 1800)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "vs_official.json", help="raw times (JSON)")
    p.add_argument("--table", type=Path, help="only reprint the table of a JSON written by --out")
    # internal: the worker processes
    p.add_argument("--worker", choices=("official", "arjax"), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.table or a.worker:
        return a
    if a.tokenizer_ch <= 0 or a.tokenizer_ch % 32:
        p.error(f"--tokenizer-ch must be a positive multiple of 32 (GroupNorm has 32 groups); got {a.tokenizer_ch}")
    if min(a.batch, a.rounds, a.steps, a.threads) < 1 or a.warmup < 0:
        p.error("--batch, --rounds, --steps and --threads must be >= 1 and --warmup >= 0")
    try:
        a.depth_list = [int(d) for d in a.depths.split(",") if d.strip()]
    except ValueError:
        p.error(f"--depths must be comma-separated integers; got {a.depths!r}")
    if not a.depth_list or min(a.depth_list) < 1:
        p.error(f"--depths must name at least one depth >= 1; got {a.depths!r}")
    a.phase_list = [s.strip() for s in a.phases.split(",") if s.strip()]
    if not a.phase_list or set(a.phase_list) - set(PHASES):
        p.error(f"--phases must be a comma-separated subset of {','.join(PHASES)}; got {a.phases!r}")
    if a.official is None:
        p.error("--official DIR is required (a checkout of FoundationVision/VAR)")
    return a


# ============================================ worker side ============================================
def max_rss_bytes() -> int:
    """Peak resident set of this process. Linux carries ru_maxrss across exec, so it is at least the
    (small, jax- and torch-free) driver's RSS at the time it started this worker."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def vm_hwm_bytes():
    """High-water mark of the current address space only (not inherited across exec); Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def inputs(args):
    """The same labels and token indices on both sides (numpy, --seed)."""
    import numpy as np
    rng = np.random.default_rng(args.seed)
    labels = rng.integers(0, NUM_CLASSES, (args.batch,)).astype(np.int32)
    tokens = rng.integers(0, VOCAB, (args.batch, SEQ_LEN)).astype(np.int32)
    return labels, tokens


class Channel:
    """JSON lines on the real stdout; anything else written to fd 1 (library prints, C code) goes to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, obj):
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()


def serve(chan: Channel, step, info: dict, warmup: int, finish=None):
    """Warm up, announce readiness, then answer the driver's run / stop requests until stop."""
    t = time.perf_counter()
    step()
    info["first_call_s"] = time.perf_counter() - t
    for _ in range(warmup - 1):
        step()
    chan.send({"ready": True, **info})
    busy_cpu = busy_wall = 0.0
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "run":
            times, c0 = [], cpu_seconds()
            for _ in range(int(msg["steps"])):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            busy_cpu += cpu_seconds() - c0
            busy_wall += sum(times)
            chan.send({"times": times})
        elif msg["op"] == "stop":
            if finish is not None:
                info.update(finish())
            info["cores_busy"] = busy_cpu / busy_wall if busy_wall else None
            chan.send({"peak_rss": max_rss_bytes(), "vm_hwm": vm_hwm_bytes(), **info})
            return
        else:
            raise ValueError(f"unknown request {msg!r}")


# -- official (PyTorch) --------------------------------------------------------------------------------
def official_worker(args, chan: Channel):
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    sys.path.insert(0, str(Path(args.official).resolve()))
    import torch.nn as nn
    from models import build_vae_var

    # build_vae_var switches off these classes' default init for speed (a checkpoint is loaded next in
    # train.py); without a checkpoint the VQVAE would keep uninitialised memory (NaNs, denormals), so
    # re-run the default init on it. VAR itself is initialised by its own init_weights.
    reset = {clz: clz.reset_parameters for clz in (nn.Linear, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm,
                                                    nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)}
    t = time.perf_counter()
    vae, var = build_vae_var(device="cpu", patch_nums=PATCH_NUMS, V=VOCAB, Cvae=CVAE, ch=args.tokenizer_ch,
                             share_quant_resi=SHARE_QUANT_RESI, num_classes=NUM_CLASSES, depth=args.depth,
                             shared_aln=False, attn_l2_norm=True, flash_if_available=True, fused_if_available=True)
    with torch.no_grad():
        for m in vae.modules():
            if type(m) in reset:
                reset[type(m)](m)
    for name, p in list(var.named_parameters()) + list(vae.named_parameters()):
        if not torch.isfinite(p).all():
            raise RuntimeError(f"official model: parameter {name} is not finite after init")
    attn = var.blocks[0].attn
    info = {"side": "official", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "params": sum(p.numel() for p in var.parameters()),
            "tokenizer_params": sum(p.numel() for p in vae.parameters()),
            "attention": "flash" if attn.using_flash else "xformers" if attn.using_xform else "torch sdpa",
            "fused_mlp": var.blocks[0].ffn.fused_mlp_func is not None,
            "fused_add_norm": var.blocks[0].fused_add_norm_fn is not None}
    labels_np, tokens_np = inputs(args)
    labels = torch.from_numpy(labels_np).long()
    if args.phase == "train":
        step, finish = official_train_step(args, vae, var, labels, torch.from_numpy(tokens_np).long(), info)
    else:
        var.eval()
        last = {}

        def step():  # @torch.no_grad inside; the images come back on the CPU, nothing to sync
            last["img"] = var.autoregressive_infer_cfg(B=args.batch, label_B=labels, g_seed=args.seed, cfg=CFG,
                                                       top_k=TOP_K, top_p=TOP_P, more_smooth=False)

        def finish():
            img = last["img"]
            if tuple(img.shape) != (args.batch, 3, 256, 256):
                raise RuntimeError(f"official sampler: bad images {tuple(img.shape)}")
            # on random VAR-d16 weights the official sampler's last images were sometimes NaN (2026-12-03 and
            # -07; on other calls torch.multinomial refused NaN probabilities): flagged in the table, the times kept
            return {"nonfinite_images": not bool(torch.isfinite(img).all())}
    info["build_s"] = time.perf_counter() - t
    serve(chan, step, info, max(args.warmup, 1), finish)


def official_train_step(args, vae, var, label_B, gt_BL, info):
    """trainer.py's VARTrainer.train_step + AmpOptimizer.backward_clip_step (fp32, no progressive
    training), with train.py's optimiser: AdamW(0.9, 0.95), fused when available, weight decay on the
    'D' group of utils.lr_control.filter_params (what lr_wd_annealing sets every step)."""
    import torch
    import torch.nn as nn
    nowd_keys = {'cls_token', 'start_token', 'task_token', 'cfg_uncond', 'pos_embed', 'pos_1LC', 'pos_start',
                 'start_pos', 'lvl_embed', 'gamma', 'beta', 'ada_gss', 'moe_bias', 'scale_mul'}
    decay, no_decay = [], []
    for name, p in var.named_parameters():
        if p.requires_grad:
            nd = p.ndim == 1 or name.endswith('bias') or any(k in name for k in nowd_keys)
            (no_decay if nd else decay).append(p)
    paras = decay + no_decay
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    lr = 1e-4 * args.batch / 256  # tblr * global batch / 256
    try:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
        info["adamw"] = "fused"
    except (RuntimeError, ValueError) as e:  # fused AdamW on CPU needs a recent torch
        print(f"[official] fused AdamW unavailable ({e}); using the default implementation", file=sys.stderr)
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
        info["adamw"] = "foreach/for-loop (fused unavailable)"
    train_loss = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing, reduction='none')
    B, V, L = args.batch, VOCAB, SEQ_LEN
    loss_weight = torch.ones(1, L) / L
    bounds = [0]
    for pn in PATCH_NUMS:
        bounds.append(bounds[-1] + pn * pn)
    gt_idx_Bl = [gt_BL[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    var.train()
    var.prog_si = vae.quantize.prog_si = -1
    last = {}

    def step():
        with torch.no_grad():
            x_BLCv_wo_first_l = vae.quantize.idxBl_to_var_input(gt_idx_Bl)
        logits_BLV = var(label_B, x_BLCv_wo_first_l)
        loss = train_loss(logits_BLV.view(-1, V), gt_BL.view(-1)).view(B, -1)
        loss = loss.mul(loss_weight).sum(dim=-1).mean()
        loss.backward(retain_graph=False, create_graph=False)
        torch.nn.utils.clip_grad_norm_(paras, 2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last["pred"] = logits_BLV.data.argmax(dim=-1)  # the trainer's per-step accuracy input
        last["loss"] = loss.detach()

    def finish():
        loss = float(last["loss"])
        if loss != loss or abs(loss) == float("inf"):
            raise RuntimeError(f"official training loss is not finite: {loss}")
        return {"final_loss": loss}

    return step, finish


# -- arjax (JAX) ----------------------------------------------------------------------------------------
def arjax_worker(args, chan: Channel):
    import jax
    import numpy as np
    info = {"side": "arjax", "jax": jax.__version__, "backend": jax.default_backend(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    labels, tokens = inputs(args)
    t = time.perf_counter()
    if args.phase == "train":
        step, finish = arjax_train_step(args, labels, tokens, info)
    else:
        import arjax
        sys.path.insert(0, str(HERE))
        from var_bench import make_meta
        meta = make_meta(argparse.Namespace(image_size=256, tokenizer_ch=args.tokenizer_ch, depth=args.depth,
                                            dtype="float32", remat=False, attn="auto"))
        pipe = arjax.build(meta, seed=args.seed)
        info["params"] = int(sum(x.size for x in jax.tree.leaves(pipe.state) if hasattr(x, "size")))
        info["tokenizer_params"] = int(sum(x.size for x in jax.tree.leaves(pipe.tokenizer.state)
                                           if hasattr(x, "size")))
        last = {}

        def step():
            last["img"] = np.asarray(pipe.sample(labels, cfg=CFG, top_k=TOP_K, top_p=TOP_P, seed=args.seed))

        def finish():
            img = last["img"]
            if img.shape != (args.batch, 256, 256, 3) or not np.isfinite(img).all():
                raise RuntimeError(f"arjax sampler: bad images {img.shape}")
            return {}
    info["build_s"] = time.perf_counter() - t
    serve(chan, step, info, max(args.warmup, 1), finish)


def arjax_train_step(args, labels, tokens, info):
    """The step `arjax train` runs (arjax.train.trainer.make_train_step: jitted, state donated, the
    phase static), built as trainer.train builds it, on configs/imagenet.py:d16 resized to --depth,
    fp32, without remat / EMA / gradient accumulation, over a random tokenizer; layer scan per
    --scan-layers."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arjax import members
    from arjax.config import load_config
    from arjax.nn.init import create
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    from arjax.train.generator_tasks import pure
    from arjax.train.trainer import build_optimizer, make_train_step, state_initializer

    d = args.depth
    cfg = load_config(str(ROOT / "configs" / "imagenet.py") + ":d16")
    scan = args.scan_layers == "on" or (args.scan_layers == "auto" and d >= SCAN_FROM_DEPTH)
    cfg.model.update(depth=d, embed_dim=64 * d, num_heads=d, remat=False, scan_layers=scan, attn_impl="auto",
                     dtype="float32")
    info["scan_layers"] = scan
    cfg.update(batch_size=args.batch, ema_decay=0.0, accum_steps=1, seed=args.seed)
    cfg.loss.label_smoothing = float(args.label_smoothing)
    # the released tokenizer layout (the one the recipe plans with) with --tokenizer-ch channels
    tok_cfg = VQVAEConfig(**dict(cfg.plan.tokenizer.to_dict(), ch=args.tokenizer_ch))
    if tuple(tok_cfg.patch_nums) != PATCH_NUMS or tok_cfg.vocab_size != VOCAB or tok_cfg.z_channels != CVAE:
        raise RuntimeError(f"configs/imagenet.py's tokenizer layout changed: {tok_cfg}")
    task = members.task_class("var")(cfg, abstract_tokenizer=tok_cfg)
    kind = members.tokenizer_kind(task.member.tokenizer)
    task.tok_params = pure(create(kind.cls, tok_cfg, args.seed))  # real (random) weights, not shapes
    tx, _ = build_optimizer(cfg)
    state = jax.jit(state_initializer(task, tx, cfg))()
    consts = jax.device_put(jax.tree.map(np.asarray, task.constants()))
    batch = {"tokens": jnp.asarray(tokens), "label": jnp.asarray(labels)}
    train_step = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay, 1), static_argnums=3, donate_argnums=0)
    info["params"] = int(sum(x.size for x in jax.tree.leaves(state["params"])))
    info["tokenizer_params"] = int(sum(np.size(x) for x in jax.tree.leaves(task.tok_params)))
    # the trainer sets no matmul precision: JAX's default (exact fp32 on CPU)
    info["precision"] = str(getattr(jax.config, "jax_default_matmul_precision", None))
    box = {"state": state, "metrics": None}

    def step():
        s = box["state"]
        s, m = train_step(s, consts, batch, task.phase(int(box.get("step", 0))))
        box["state"], box["metrics"] = jax.block_until_ready((s, m))
        box["step"] = box.get("step", 0) + 1

    def finish():
        m = box["metrics"]
        loss = float(m["loss"])
        if not bool(m["finite"]) or not np.isfinite(loss):
            raise RuntimeError(f"arjax training loss is not finite: {loss}")
        return {"final_loss": loss}

    return step, finish


def worker_main(args):
    chan = Channel()
    try:
        (official_worker if args.worker == "official" else arjax_worker)(args, chan)
    except BaseException as e:  # noqa: BLE001 - report to the driver, then die
        traceback.print_exc()
        chan.send({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


# ============================================ driver side ============================================
class WorkerError(RuntimeError):
    pass


class Worker:
    """One worker subprocess: JSON lines in, JSON lines out (read by a thread, so answers can time out);
    stderr goes to a log file whose tail is shown when the worker fails."""

    def __init__(self, side: str, python: str, argv: list[str], env: dict, timeout: float, logdir: Path):
        self.side, self.timeout = side, timeout
        self.log_path = logdir / f"{side}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", side, *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     text=True, bufsize=1, cwd=str(ROOT))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # EOF: the worker exited

    def stderr_tail(self, n: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join("    " + s for s in lines[-n:])

    def fail(self, what: str):
        self.close()  # the worker's stderr is complete once it is gone
        raise WorkerError(f"{self.side} worker {what}; its stderr ends with:\n{self.stderr_tail()}\n"
                          f"(full log: {self.log_path})")

    def receive(self) -> dict:
        try:
            line = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            self.fail(f"gave no answer within --timeout {self.timeout:.0f} s")
        if line is None:
            self.proc.wait()
            self.fail(f"exited with code {self.proc.returncode}")
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            self.fail(f"wrote a line that is not JSON: {line[:200]!r}")
        if "error" in msg:
            self.fail(f"failed: {msg['error']}")
        return msg

    def request(self, msg: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc.wait()
            self.fail(f"exited with code {self.proc.returncode}")
        return self.receive()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def check_official(args) -> str:
    """The official checkout and interpreter are usable; returns its torch version."""
    d = args.official
    if not d.is_dir():
        sys.exit(f"--official {d}: no such directory. Give a checkout of the official code, "
                 f"FoundationVision/VAR on GitHub")
    if not (d / "models" / "__init__.py").is_file() or not (d / "dist.py").is_file():
        sys.exit(f"--official {d}: no models/__init__.py or dist.py inside; give the root of a checkout of "
                 f"FoundationVision/VAR")
    try:
        r = subprocess.run([args.official_python, "-c", "import torch, numpy; print(torch.__version__)"],
                           capture_output=True, text=True)
        ok, tail = r.returncode == 0, (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
    except OSError as e:  # no such interpreter
        ok, tail = False, str(e)
    if not ok:
        sys.exit(f"--official-python {args.official_python} cannot import torch and numpy ({tail}). Make a venv: "
                 f"python -m venv venv && venv/bin/pip install torch numpy huggingface_hub "
                 f"(a CPU-only torch wheel is enough), then pass "
                 f"--official-python venv/bin/python")
    return r.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def worker_argv(args, phase: str, depth: int) -> list[str]:
    argv = ["--phase", phase, "--depth", str(depth), "--batch", str(args.batch), "--scan-layers", args.scan_layers,
            "--tokenizer-ch", str(args.tokenizer_ch), "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--label-smoothing", str(args.label_smoothing), "--seed", str(args.seed)]
    return argv + ["--official", str(args.official.resolve())]


def worker_envs(args) -> tuple[dict, dict]:
    official = dict(os.environ)
    arjax = dict(os.environ, JAX_PLATFORMS="cpu")
    if args.threads != os.cpu_count():
        arjax["XLA_FLAGS"] = (arjax.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                              f"intra_op_parallelism_threads={args.threads}").strip()
    return official, arjax


def run_pair(args, phase: str, depth: int, logdir: Path) -> dict:
    """Fresh official and arjax workers for one phase and depth, timed in interleaved rounds."""
    env_off, env_arj = worker_envs(args)
    argv = worker_argv(args, phase, depth)
    specs = (("official", args.official_python, env_off), ("arjax", sys.executable, env_arj))
    workers, result = {}, {"phase": phase, "depth": depth}
    try:
        for side, python, env in specs:  # one at a time: neither builds or compiles while the other runs
            print(f"[{phase} d{depth}] building {side} ...", file=sys.stderr, flush=True)
            workers[side] = Worker(side, python, argv, env, args.timeout, logdir)
            ready = workers[side].receive()
            print(f"[{phase} d{depth}] {side} ready: build {ready['build_s']:.1f} s, "
                  f"first call {ready['first_call_s']:.1f} s", file=sys.stderr, flush=True)
        times = {side: [] for side in workers}
        for r in range(args.rounds):
            for side, w in workers.items():
                times[side].append(w.request({"op": "run", "steps": args.steps})["times"])
            print(f"[{phase} d{depth}] round {r + 1}/{args.rounds}: " + ", ".join(
                f"{s} {1000 * statistics.median(t[-1]):.0f} ms" for s, t in times.items()), file=sys.stderr, flush=True)
        for side, w in workers.items():
            result[side] = {"times": times[side], "info": w.request({"op": "stop"})}
            w.proc.wait(timeout=60)
    finally:
        for w in workers.values():
            w.close()
    return result


# -- table ---------------------------------------------------------------------------------------------
def fmt_ms(times) -> str:
    flat = [1000 * t for rnd in times for t in rnd]
    return f"{statistics.median(flat):.0f} [{min(flat):.0f}-{max(flat):.0f}]"


def median_s(times) -> float:
    return statistics.median([t for rnd in times for t in rnd])


def linear_gflop(phase: str, depth: int, batch: int) -> float:
    """GFLOP of one call's linear layers as the official code computes them (12 C^2 per block for qkv, proj
    and the MLP, C x V for the head, over every token; training 3x the forward; sampling's head on all
    2B rows; attention scores, AdaLN and the tokenizer left out): a floor on the work, so the GFLOP/s
    it gives is a lower bound on each side's matmul rate, comparable between the two."""
    c = 64 * depth
    params = depth * 12 * c * c + c * VOCAB
    return (6 * params * batch * SEQ_LEN if phase == "train" else 2 * params * 2 * batch * SEQ_LEN) / 1e9


def fmt_mib(n) -> str:
    return "n/a" if n is None else f"{n / MiB:,.0f} MiB"


def config_text(run: dict, r: dict) -> str:
    d = r["depth"]
    def count(key):  # parameter counts, one number when both sides agree
        po, pa = r["official"]["info"].get(key), r["arjax"]["info"].get(key)
        return f"{po / 1e6:.1f}M" if po == pa else f"{po / 1e6:.2f}M official / {pa / 1e6:.2f}M arjax"
    return (f"VAR-d{d} (C={64 * d}, H={d}, {count('params')}), tok ch{run['tokenizer_ch']} "
            f"({count('tokenizer_params')}), 256px, B={run['batch']}, fp32")


def table(run: dict) -> str:
    header = ["device", "date", "config", "phase", "official ms median [min-max]", "arjax ms median [min-max]",
              "speed ratio (official/arjax)", "linear-layer GFLOP/s official / arjax", "official peak RSS",
              "arjax peak RSS"]
    lines = [f"Threads per side: {run['threads']} ({run['thread_note']}); {run['rounds']} interleaved rounds x "
             f"{run['steps']} timed calls per side after {run['warmup']} warm-up call(s); ratio > 1: arjax faster.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for r in run["results"]:
        o, a = r["official"], r["arjax"]
        phase = {"train": "train step (fwd+bwd+AdamW)",
                 "sample": "sample (cfg 1.5, k 900, p 0.96, + decode)"}[r["phase"]]
        lines.append("| " + " | ".join([
            run["device"], run["date"], config_text(run, r), phase, fmt_ms(o["times"]), fmt_ms(a["times"]),
            f"{median_s(o['times']) / median_s(a['times']):.2f}x",
            " / ".join(f"{linear_gflop(r['phase'], r['depth'], run['batch']) / median_s(x['times']):.0f}" for x in (o, a)),
            fmt_mib(o["info"].get("peak_rss")), fmt_mib(a["info"].get("peak_rss"))]) + " |")
        oi, ai = o["info"], a["info"]
        extra = f", AdamW {oi['adamw']}" if "adamw" in oi else ""
        extra += "; THE OFFICIAL SAMPLER'S LAST IMAGES WERE NOT FINITE" if oi.get("nonfinite_images") else ""
        scan = "; arjax model.scan_layers on" if ai.get("scan_layers") else ""
        notes.append(f"- {r['phase']} d{r['depth']}{scan}: build official {oi['build_s']:.1f} s / "
                     f"arjax {ai['build_s']:.1f} s; "
                     f"first call (compile / warm-up) official {oi['first_call_s']:.1f} s / arjax "
                     f"{ai['first_call_s']:.1f} s; cores busy official {fmt_cores(oi)} / arjax {fmt_cores(ai)}; "
                     f"official attention {oi.get('attention')}{extra}")
    lines += ["", "Notes:",
              "- Both sides start from token indices: the official trainer's per-step VQVAE encoding of images is "
              "not included (arjax trains from cached tokens); neither is data loading. Sampling includes the "
              "tokenizer decode to images (arjax: up to numpy on the host).",
              "- Official train step = trainer.py's step without AMP (fp32), with its stochastic depth "
              "(drop_path 0.1 d/24) and fused AdamW where torch has it; arjax = arjax.train.trainer.make_train_step "
              "(jit, donated state), which has no stochastic depth.",
              "- Peak RSS = getrusage max RSS of each fresh worker process (per phase and depth).",
              "- Linear-layer GFLOP/s: the linear layers' FLOPs as the official code computes them (3x the forward "
              "for training; sampling with the head on all 2B rows, where arjax guides before its affine head and "
              "reads out B) over the median time, decode and attention included in the time but not counted.",
              *notes,
              f"- {run['command']}"]
    return "\n".join(lines)


def fmt_cores(info) -> str:
    c = info.get("cores_busy")
    return "n/a" if c is None else f"{c:.1f}"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    torch_version = check_official(args)
    try:
        jax_version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"this interpreter ({sys.executable}) has no jax: run the driver with the python that has arjax")
    ncpu = os.cpu_count()
    run = {"device": f"{cpu_model()}, {ncpu} cores, torch {torch_version}, jax {jax_version}",
           "date": datetime.date.today().isoformat(), "batch": args.batch, "tokenizer_ch": args.tokenizer_ch,
           "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
           "thread_note": "torch set_num_threads, 1 inter-op thread; XLA " + (
               "default (all cores)" if args.threads == ncpu else f"XLA_FLAGS {worker_envs(args)[1]['XLA_FLAGS']!r}"),
           "label_smoothing": args.label_smoothing, "seed": args.seed,
           "command": "python benchmarks/vs_official.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "results": []}
    logdir = Path(tempfile.mkdtemp(prefix="vs_official_"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for phase in args.phase_list:
            for depth in args.depth_list:
                run["results"].append(run_pair(args, phase, depth, logdir))
                args.out.write_text(json.dumps(run, indent=1))  # partial results survive a later failure
    except WorkerError as e:
        sys.exit(f"error: {e}" + (f"\n(results so far in {args.out})" if run["results"] else ""))
    print(table(run))
    print(f"\nraw times: {args.out}; worker logs: {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
