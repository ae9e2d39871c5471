"""One training run, top to bottom: input, model, state, step, checkpoint, loop, export.

Resumable at any moment: the state (params, optimiser, EMA, step) and the data iterator are saved
together; per-step randomness is `fold_in(key(seed), step)`, so a resumed run takes exactly the
steps an uninterrupted one would.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arjax.data import make_dataset, make_source
from arjax.train import checkpoint
from arjax.train.losses import NonFiniteLoss
from arjax.train.optim import make_optimizer, peak_lr, var_schedule, wd_schedule
from arjax.train.tasks import TASKS

log = logging.getLogger("arjax.train")


def _ema(ema, params, decay):
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def make_train_step(task, tx, seed: int, ema_decay: float):
    def train_step(state, consts, batch, phase):
        step = state["step"]
        key = jax.random.fold_in(jax.random.key(seed), step)
        k_loss, k_post = jax.random.split(key)
        (loss, (metrics, aux)), grads = jax.value_and_grad(task.loss, has_aux=True)(
            state["params"], state["extra"], consts, batch, k_loss, step, phase)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params, extra, post_metrics = task.post_update(params, state["extra"], aux, step, k_post)
        new = {"step": step + 1, "params": params, "opt_state": opt_state, "extra": extra,
               "ema": _ema(state["ema"], params, ema_decay) if ema_decay > 0 else state["ema"]}
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        for v in post_metrics.values():  # e.g. a discriminator that diverged
            finite &= jnp.isfinite(v)
        # A non-finite step changes nothing but the flag: the state stays the last good one.
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, {**metrics, **post_metrics, "grad_norm": grad_norm, "finite": finite}

    return train_step


class _Preempted:
    """SIGTERM (preemption, `kill`) asks the loop to checkpoint and stop at the next step."""

    def __init__(self):
        self.flag = False
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None

    def _handle(self, *_):
        self.flag = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train(cfg, workdir, *, progress: bool = True) -> dict:
    """Run (or resume) the training described by `cfg` in `workdir`. Returns a summary dict."""
    t_start = time.time()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, workdir)

    # ---- model ---------------------------------------------------------------------------------
    task = TASKS[cfg.task](cfg)

    # ---- input ---------------------------------------------------------------------------------
    source_kwargs = cfg.data.kwargs.to_dict()
    if cfg.data.name == "synthetic":  # generate at the model's resolution unless told otherwise
        source_kwargs.setdefault("image_size", task.image_size)
    source = make_source(cfg.data.name, **source_kwargs)
    class_names = list(getattr(source, "class_names", None) or []) or None
    source = task.prepare_source(source, workdir, progress)
    dataset = make_dataset(source, image_size=task.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                           train=True, augment=cfg.data.augment)
    data_iter = iter(dataset)

    # ---- state ---------------------------------------------------------------------------------
    schedule = var_schedule(peak_lr(cfg.optim.base_lr, cfg.batch_size), cfg.steps, cfg.optim.warmup_steps,
                            wp0=cfg.optim.wp0, wpe=cfg.optim.wpe, kind=cfg.optim.schedule)
    wd = wd_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end or cfg.optim.weight_decay, cfg.steps)
    tx = make_optimizer(schedule, weight_decay=wd, b1=cfg.optim.b1, b2=cfg.optim.b2,
                        grad_clip=cfg.optim.grad_clip)

    def init_state():
        params = task.init_params(cfg.seed)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "extra": task.init_extra(), "ema": params if cfg.ema_decay > 0 else {}}
        # strong dtypes everywhere: a weakly typed leaf would make the second step recompile
        return jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), state)

    ckpt = checkpoint.RunCheckpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
    state = init_state()
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, data_iter)
        log.info("resumed from step %d", int(state["step"]))
        print(f"resuming {workdir} from step {int(state['step'])}")
    consts = task.constants()

    # ---- step ----------------------------------------------------------------------------------
    # `phase` (static) is what changes the step's shapes, e.g. the scales of progressive training
    step_fn = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay), donate_argnums=0, static_argnums=3)
    preview_fn = jax.jit(task.preview, static_argnums=3)

    # ---- feedback ------------------------------------------------------------------------------
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    from arjax.viz import save_grid
    writer = SummaryWriter(str(workdir / "tensorboard"))

    def write_preview(params, batch, step):
        imgs, labels = preview_fn(params, consts, batch, cfg.seed)
        imgs = np.asarray(imgs)
        grid = workdir / "samples" / f"step_{step:06d}.png"
        if labels is None:  # a tokenizer: real images over their reconstructions
            path = save_grid(grid, imgs, per_row=len(imgs) // 2, row_names=["real", "reconstructed"])
        else:
            path = save_grid(grid, imgs, np.asarray(labels), per_row=cfg.sample.preview_per_class,
                             class_names=class_names)
        from PIL import Image
        writer.add_image("preview", np.asarray(Image.open(path)), step, dataformats="HWC")
        return path

    # ---- loop ----------------------------------------------------------------------------------
    start = int(state["step"])
    preempt = _Preempted()
    metrics, history, last_preview, t_loop = {}, [], None, time.time()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.task}", unit="step", disable=not progress)
    try:
        step = start
        while step < cfg.steps:
            batch = next(data_iter)
            state, m = step_fn(state, consts, batch, task.phase(step))
            step += 1
            if not bool(m["finite"]):
                raise NonFiniteLoss(
                    f"the loss or gradient became non-finite at step {step}; the update was skipped and the "
                    f"last good checkpoint (step {ckpt.latest_step()}) in {workdir / 'checkpoints'} is intact. "
                    f"Lower optim.base_lr or raise optim.warmup_steps and rerun.")
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {k: float(v) for k, v in m.items() if k != "finite"}
                metrics["lr"] = float(schedule(step - 1))
                history.append({"step": step, **metrics})
                for k, v in metrics.items():
                    writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in cfg.show_metrics})
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                last_preview = write_preview(state["ema"] or state["params"], batch, step)
            if step % cfg.checkpoint.every == 0 or step == cfg.steps or preempt.flag:
                ckpt.save(step, state, data_iter)
            bar.update(1)
            if preempt.flag:
                print(f"\nSIGTERM: saved step {step} to {workdir / 'checkpoints'}; rerun the same command to resume")
                break
        ckpt.wait()
    finally:
        bar.close()
        preempt.restore()
        writer.close()
        ckpt.close()

    finished = int(state["step"]) >= cfg.steps
    summary = {"task": cfg.task, "workdir": str(workdir), "steps": int(state["step"]), "finished": finished,
               "seconds": round(time.time() - t_start, 1), "seconds_in_loop": round(time.time() - t_loop, 1),
               "metrics": metrics, "history": history}
    if finished:
        params = state["ema"] or state["params"]
        summary["preview"] = str(write_preview(params, batch if start < cfg.steps else next(data_iter), cfg.steps))
        summary["model_dir"] = str(export(task, params, consts, workdir / "model", class_names))
    if last_preview and "preview" not in summary:
        summary["preview"] = str(last_preview)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def export(task, params, consts, directory, class_names=None) -> Path:
    """The trained model as a model directory that `arjax.load` (or the next stage) reads."""
    import shutil
    directory = Path(directory)
    if directory.exists():  # a rerun after completion re-exports the same parameters
        shutil.rmtree(directory)
    meta = task.export_meta()
    if class_names:
        meta["class_names"] = class_names
    return checkpoint.save_model(directory, meta, jax.device_get(task.export_params(params, consts)))


def _check_same_config(cfg, workdir: Path) -> None:
    """A workdir belongs to one config: resuming with another would silently mix runs."""
    path = workdir / "config.json"
    current = cfg.to_json_best_effort(sort_keys=True)
    if path.exists():
        saved = path.read_text()
        if json.loads(saved) != json.loads(current):
            diff = _diff(json.loads(saved), json.loads(current))
            raise ValueError(f"{workdir} holds a run with another config ({', '.join(diff[:6])}); "
                             f"use a new --workdir or the original config")
    else:
        path.write_text(current)


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
