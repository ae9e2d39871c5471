"""`arjax plan`: size a run before paying for the slice.

Compiles the real train step of a config for a mesh, without allocating anything (abstract state with
its shardings, `jit(...).lower(...).compile()`), and reports per device what XLA's compiled memory
analysis says (arguments, outputs, temporaries), the state's own share (parameters, optimiser, EMA),
and the step's FLOPs from XLA's cost analysis.

Devices: on a machine without the target accelerator, pass --devices N for N fake CPU devices (XLA:CPU
buffer assignment: same state sizes, temporaries indicative only), or --topology for a TPU topology
compiled ahead of time by libtpu (e.g. v5e:4x4, v4:2x2x4), which needs `jax[tpu]` installed.
"""
from __future__ import annotations

import dataclasses
import os

FAKE_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def use_fake_cpu_devices(n: int) -> None:
    """Must run before JAX initialises its backend (the flag is read once)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(FAKE_DEVICES_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{FAKE_DEVICES_FLAG}={n}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def topology_devices(name: str):
    """The devices of a TPU topology such as "v5e:4x4", for ahead-of-time compilation."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ValueError(f"--topology {name} compiles for TPU ahead of time and needs libtpu: "
                         f"pip install 'jax[tpu]' (or use --devices N for fake CPU devices)") from None
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name=name, platform="tpu").devices


@dataclasses.dataclass
class Plan:
    mesh: dict
    devices: int
    device_kind: str
    params_bytes: int          # per device, from the shardings
    opt_bytes: int
    ema_bytes: int
    argument_bytes: int        # XLA memory analysis of the compiled step, per device
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float               # per device per step, XLA cost analysis
    num_params: int

    @property
    def peak_bytes(self) -> int:
        """Live at once: inputs, outputs not written in place of a donated input, temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def plan(cfg, devices=None) -> Plan:
    import jax
    import numpy as np

    from arjax import parallel
    from arjax.train.tasks import GENERATOR_TASKS, TASKS
    from arjax.train.trainer import build_optimizer, make_train_step, state_initializer

    task = _abstract_task(cfg) if cfg.task in GENERATOR_TASKS else TASKS[cfg.task](cfg)
    mesh = parallel.make_mesh(cfg.mesh.to_dict(), devices)
    tx, _ = build_optimizer(cfg)
    state = parallel.sharded_abstract(state_initializer(task, tx, cfg), mesh)
    state_sh = parallel.shardings_of(state)
    rep, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    consts = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                          jax.eval_shape(task.constants))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
             for k, (shape, dtype) in _batch_spec(cfg, task).items()}
    step = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay), static_argnums=3, donate_argnums=0,
                   in_shardings=(state_sh, rep, batch_sh), out_shardings=(state_sh, rep))
    with jax.set_mesh(mesh):
        compiled = step.lower(state, consts, batch, task.phase(cfg.steps - 1)).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    def per_device(tree) -> int:
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    return Plan(mesh=dict(mesh.shape), devices=mesh.size, device_kind=mesh.devices.flat[0].device_kind,
                params_bytes=per_device(state["params"]), opt_bytes=per_device(state["opt_state"]),
                ema_bytes=per_device(state["ema"]), argument_bytes=mem.argument_size_in_bytes,
                output_bytes=mem.output_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
                temp_bytes=mem.temp_size_in_bytes, flops=float(cost.get("flops", 0.0)),
                num_params=sum(x.size for x in jax.tree.leaves(state["params"])))


def _abstract_task(cfg):
    """A generator task on the trained tokenizer if it exists, else on its family's default layout (for
    VAR the released vae_ch160v4096z32, 256 px); shapes only: planning reads no weights."""
    from pathlib import Path

    from arjax.train.checkpoint import META_FILE, read_meta
    from arjax.train.tasks import GENERATOR_TASKS
    task_cls = GENERATOR_TASKS[cfg.task]
    tok_cfg_cls = task_cls.member_info().tok.config_cls
    if (Path(cfg.tokenizer_dir) / META_FILE).is_file():
        tok = tok_cfg_cls(**read_meta(cfg.tokenizer_dir)["tokenizer"])
    else:
        tok = tok_cfg_cls()
    return task_cls(cfg, abstract_tokenizer=tok)


def _batch_spec(cfg, task) -> dict:
    import numpy as np
    b = cfg.batch_size
    label = ((b,), np.int32)
    if hasattr(task, "seq_len") and cfg.data.cache_tokens:
        return {"tokens": ((b, task.seq_len), np.int32), "label": label}
    return {"image": ((b, task.image_size, task.image_size, 3), np.float32), "label": label}


def format_plan(p: Plan, cfg) -> str:
    mib = 2 ** 20
    rows = [
        ("parameters", p.params_bytes), ("optimiser state", p.opt_bytes), ("EMA", p.ema_bytes),
        ("step arguments (state + batch + constants)", p.argument_bytes),
        ("step outputs (not in place of donated inputs)", p.output_bytes - p.alias_bytes),
        ("step temporaries (activations, gradients)", p.temp_bytes),
        ("peak estimate", p.peak_bytes),
    ]
    lines = [f"{cfg.task}: {p.num_params:,} parameters, global batch {cfg.batch_size}, "
             f"mesh {p.mesh} = {p.devices} x {p.device_kind}",
             f"{'per device':48s} {'MiB':>12s}"]
    lines += [f"  {name:46s} {v / mib:12,.3f}" for name, v in rows]
    lines.append(f"  {'TFLOPs per step (this device)':46s} {p.flops / 1e12:12,.4f}")
    lines.append(f"  {'TFLOPs per step (all devices)':46s} {p.flops * p.devices / 1e12:12,.4f}")
    return "\n".join(lines)
