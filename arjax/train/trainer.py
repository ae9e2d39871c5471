"""One training run, top to bottom: input, model, state, step, checkpoint, loop, export.

Resumable at any moment: the state (params, optimiser, EMA, step) and the data iterator are saved
together; per-step randomness is `fold_in(key(seed), step)`, so a resumed run takes exactly the
steps an uninterrupted one would.

The same code runs on one CPU and on a multi-host mesh: the state is created already sharded
(`arjax.parallel` rules), the step is jitted with explicit shardings and donation, each process
feeds its rows of the global batch, and only process 0 writes logs, previews and summaries.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from arjax import members, parallel
from arjax.data import make_dataset, make_source
from arjax.nn.init import run_once_options
from arjax.train import checkpoint
from arjax.train.losses import NonFiniteLoss
from arjax.train.optim import make_optimizer, peak_lr, var_schedule, wd_schedule


class PeerFailure(RuntimeError):
    """A multi-process run lost a process; the survivors cannot go on (and must not hang)."""


def _ema(ema, params, decay):
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def accumulated_grads(loss_fn, accum_steps: int):
    """value_and_grad of `loss_fn(params, extra, consts, batch, key, ...)`, the batch split into
    `accum_steps` microbatches run one after another (lax.scan): the same mean loss and gradients as
    one pass over the whole batch, with the activations of a microbatch. Microbatch i takes rows i, i + k,
    i + 2k, ... so that every device keeps its own rows (the batch is split over devices by blocks of
    rows). The loss must be a mean over the batch and return no per-example aux."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        return grad_fn

    def run(params, extra, consts, batch, key, *rest):
        def split(x):
            if x.shape[0] % accum_steps:
                raise ValueError(f"accum_steps={accum_steps} must divide the batch ({x.shape[0]} rows)")
            x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
            return parallel.constrain(x, None, "batch", *(None,) * (x.ndim - 2))

        def one(i, micro):
            return grad_fn(params, extra, consts, micro, jax.random.fold_in(key, i), *rest)

        def body(acc, xs):
            (loss, (metrics, aux)), grads = one(*xs)
            if jax.tree.leaves(aux):
                raise ValueError("accum_steps > 1 applies to losses without per-batch aux outputs (the AR "
                                 "models); the tokenizer's code reseeding and discriminator need the whole batch")
            return jax.tree.map(jnp.add, acc, (loss, metrics, grads)), None

        micro = jax.tree.map(split, batch)
        (_, (m0, _)), g0 = jax.eval_shape(one, 0, jax.tree.map(lambda x: x[0], micro))
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (jax.ShapeDtypeStruct((), jnp.float32), m0, g0))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
        loss, metrics, grads = jax.tree.map(lambda t: t / accum_steps, total)
        return (loss, (metrics, {})), grads

    return run


def make_train_step(task, tx, seed: int, ema_decay: float, accum_steps: int = 1):
    grad_fn = accumulated_grads(task.loss, accum_steps)

    def train_step(state, consts, batch, phase):
        step = state["step"]
        key = jax.random.fold_in(jax.random.key(seed), step)
        k_loss, k_post = jax.random.split(key)
        (loss, (metrics, aux)), grads = grad_fn(state["params"], state["extra"], consts, batch, k_loss, step, phase)
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
    main = parallel.is_main_process()
    if "://" in str(workdir):
        raise ValueError(f"--workdir {workdir}: a URL is not supported; use a filesystem path every host sees "
                         f"(on TPU VMs a gcsfuse mount of the bucket, as launch/tpu.py run sets up)")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, workdir, write=main)

    # ---- mesh ----------------------------------------------------------------------------------
    mesh = parallel.make_mesh(cfg.mesh.to_dict())
    local_batch = _local_batch_size(cfg.batch_size, mesh)
    rep = parallel.replicated(mesh)

    # ---- model ---------------------------------------------------------------------------------
    task = members.task_class(cfg.task)(cfg)

    # ---- input ---------------------------------------------------------------------------------
    source_kwargs = cfg.data.kwargs.to_dict()
    if cfg.data.name == "synthetic":  # generate at the model's resolution unless told otherwise
        source_kwargs.setdefault("image_size", task.image_size)
    source = make_source(cfg.data.name, **source_kwargs)
    class_names = list(getattr(source, "class_names", None) or []) or None
    source = _prepare_source(task, source, workdir, progress and main)

    def dataset(start_position=0):
        ds = make_dataset(source, image_size=task.image_size, batch_size=local_batch, seed=cfg.seed, train=True,
                          augment=cfg.data.augment, process_index=jax.process_index(),
                          process_count=jax.process_count(), start_position=start_position)
        return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)  # overlaps the step

    data_iter = iter(dataset())

    # ---- state ---------------------------------------------------------------------------------
    tx, schedule = build_optimizer(cfg)
    init_state = state_initializer(task, tx, cfg)

    # shapes first, then the state is created (or restored) directly in its shards
    abstract = parallel.sharded_abstract(init_state, mesh)
    state_sh = parallel.shardings_of(abstract)
    ckpt = checkpoint.RunCheckpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
    if ckpt.latest_step() is not None:
        state, data_iter = _resume(ckpt, abstract, data_iter, dataset, local_batch, main)
        print_main(main, f"resuming {workdir} from step {int(state['step'])}")
    else:
        state = jax.jit(init_state, out_shardings=state_sh, compiler_options=run_once_options())()
    consts = jax.device_put(jax.tree.map(np.asarray, task.constants()), rep)
    report = parallel.shard_report({"params": state["params"], "opt_state": state["opt_state"]})
    if main:
        (workdir / "sharding.json").write_text(json.dumps(report, indent=1))
        print(f"mesh {dict(mesh.shape)}: params + optimiser state {report['bytes_per_device'] / 2**20:.1f} MiB "
              f"per device of {report['bytes_total'] / 2**20:.1f} MiB")

    # ---- step ----------------------------------------------------------------------------------
    # `phase` (static) is what changes the step's shapes, e.g. the scales of progressive training
    step_fn = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay, cfg.get("accum_steps", 1)), static_argnums=3,
                      donate_argnums=0, in_shardings=(state_sh, rep, parallel.batch_sharding(mesh)),
                      out_shardings=(state_sh, rep), compiler_options=task.compiler_options())
    preview_fn = jax.jit(task.preview, static_argnums=3, out_shardings=rep)

    # ---- feedback ------------------------------------------------------------------------------
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    from arjax.viz import save_grid
    writer = SummaryWriter(str(workdir / "tensorboard")) if main else None

    def write_preview(params, batch, step):
        imgs, labels = preview_fn(params, consts, batch, cfg.seed)  # every process takes part
        if not main:
            return None
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
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.task}", unit="step",
               disable=not (progress and main))
    pending = None  # the previous step's metrics: read after the next step is queued, so the host never idles

    def check_finite(m, step):
        if not bool(m["finite"]):
            raise NonFiniteLoss(
                f"the loss or gradient became non-finite at step {step}; the update was skipped and the "
                f"last good checkpoint (step {ckpt.latest_step()}) in {workdir / 'checkpoints'} is intact. "
                f"Lower optim.base_lr or raise optim.warmup_steps and rerun.")

    try:
        with jax.set_mesh(mesh):
            step = start
            while step < cfg.steps:
                batch = parallel.global_batch(next(data_iter), mesh)
                state, m = step_fn(state, consts, batch, task.phase(step))
                step += 1
                if pending is not None:
                    check_finite(*pending)
                pending = (m, step)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    metrics = {k: float(v) for k, v in m.items() if k != "finite"}
                    metrics["lr"] = float(schedule(step - 1))
                    history.append({"step": step, **metrics})
                    for k, v in metrics.items():
                        writer and writer.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in cfg.show_metrics})
                if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                    last_preview = write_preview(state["ema"] or state["params"], batch, step)
                if step % cfg.checkpoint.every == 0 or step == cfg.steps or preempt.flag:
                    check_finite(*pending)  # never save the state of a step that was skipped
                    ckpt.save(step, state, data_iter)
                bar.update(1)
                if preempt.flag:
                    print_main(main, f"\nSIGTERM: saved step {step} to {workdir / 'checkpoints'}; "
                                     f"rerun the same command to resume")
                    break
            if pending is not None:
                check_finite(*pending)
            ckpt.wait()
            finished = int(state["step"]) >= cfg.steps
            params = state["ema"] or state["params"]
            if finished:
                final_preview = write_preview(params, batch if start < cfg.steps else
                                              parallel.global_batch(next(data_iter), mesh), cfg.steps)
                model_dir = export(task, params, consts, workdir / "model", class_names)
    except Exception as e:
        if jax.process_count() > 1 and not isinstance(e, NonFiniteLoss):
            raise PeerFailure(
                f"process {jax.process_index()}: another process of this run failed or was stopped, or this one "
                f"could not reach it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                f"Rerun the same command on every host: it resumes from the last complete checkpoint "
                f"(step {ckpt.latest_step()}).") from e
        raise
    finally:
        bar.close()
        preempt.restore()
        writer and writer.close()
        ckpt.close()

    summary = {"task": cfg.task, "workdir": str(workdir), "steps": int(state["step"]), "finished": finished,
               "seconds": round(time.time() - t_start, 1), "seconds_in_loop": round(time.time() - t_loop, 1),
               "metrics": metrics, "history": history}
    if finished:
        summary.update(preview=str(final_preview), model_dir=str(model_dir))
    elif last_preview:
        summary["preview"] = str(last_preview)
    if main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def build_optimizer(cfg):
    """The AdamW of the config and its learning-rate schedule."""
    schedule = var_schedule(peak_lr(cfg.optim.base_lr, cfg.batch_size), cfg.steps, cfg.optim.warmup_steps,
                            wp0=cfg.optim.wp0, wpe=cfg.optim.wpe, kind=cfg.optim.schedule)
    wd = wd_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end or cfg.optim.weight_decay, cfg.steps)
    tx = make_optimizer(schedule, weight_decay=wd, b1=cfg.optim.b1, b2=cfg.optim.b2,
                        grad_clip=cfg.optim.grad_clip)
    return tx, schedule


def state_initializer(task, tx, cfg):
    """A function of no arguments that builds the fresh train state (traced: shapes, or jitted: values)."""
    def init_state():
        params = task.init_params(cfg.seed)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "extra": task.init_extra(), "ema": params if cfg.ema_decay > 0 else {}}
        # strong dtypes everywhere: a weakly typed leaf would make the second step recompile
        return jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), state)
    return init_state


def print_main(main: bool, text: str) -> None:
    if main:
        print(text)


def _local_batch_size(batch_size: int, mesh) -> int:
    """This process's rows of the global batch; the batch must split evenly over data x fsdp."""
    div = parallel.batch_divisor(mesh)
    if batch_size % div or batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} must be divisible by the mesh's data x fsdp = {div} devices "
                         f"and by the {jax.process_count()} processes; change batch_size or mesh")
    return batch_size // jax.process_count()


def _prepare_source(task, source, workdir, progress):
    """A token cache is written once, by process 0; the others wait for it, then all read it."""
    if jax.process_count() == 1:
        return task.prepare_source(source, workdir, progress)
    if parallel.is_main_process():
        task.prepare_source(source, workdir, progress)
    parallel.barrier("arjax: data source prepared")
    return task.prepare_source(source, workdir, False)


def _resume(ckpt, abstract, data_iter, dataset, local_batch, main):
    """Restore the latest checkpoint straight into the shardings of `abstract` (any mesh); the data iterator
    resumes from its saved state, or, if the run now has another number of processes, from the step's
    position."""
    step = ckpt.latest_step()
    saved_by = ckpt.data_process_count(step)
    if saved_by == jax.process_count():
        return ckpt.restore(abstract, data_iter), data_iter
    state = ckpt.restore(abstract)
    print_main(main, f"the data iterator of step {step} was saved by {saved_by} processes; "
                     f"this run has {jax.process_count()}: repositioning it by the step count")
    return state, iter(dataset(int(state["step"]) * local_batch))


def export(task, params, consts, directory, class_names=None) -> Path:
    """The trained model as a model directory that `arjax.load` (or the next stage) reads. Every process
    calls it (orbax writes the shards of a sharded state together)."""
    import shutil
    directory = Path(directory)
    if directory.exists() and parallel.is_main_process():  # a rerun after completion re-exports
        shutil.rmtree(directory)
    parallel.barrier("arjax: export directory cleared")
    meta = task.export_meta()
    if class_names:
        meta["class_names"] = class_names
    return checkpoint.save_model(directory, meta, task.export_params(params, consts))



def _check_same_config(cfg, workdir: Path, write: bool = True) -> None:
    """A workdir belongs to one config: resuming with another would silently mix runs. The mesh, the
    microbatches per step and the planned slice may change (a run moves to another slice): they change
    where and in how many pieces the numbers are computed, not what they are. Keys added to arjax after a
    run started are accepted at the default that reproduces the old behaviour."""
    path = workdir / "config.json"
    current = cfg.to_json_best_effort(sort_keys=True)
    if path.exists():
        diff = [d for d in _diff(json.loads(path.read_text()), json.loads(current))
                if not d.startswith(("mesh.", "plan.", "accum_steps:")) and d not in _NEW_KEYS_AT_DEFAULT]
        if diff:
            raise ValueError(f"{workdir} holds a run with another config ({', '.join(diff[:6])}); "
                             f"use a new --workdir or the original config")
    elif write:
        path.write_text(current)


_NEW_KEYS_AT_DEFAULT = {"data.cache_views: None -> 1"}


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
