"""`arjax plan`: size a run before paying for the slice.

Compiles the real train step of a config for a mesh, without allocating anything (abstract state with
its shardings, `jit(...).lower(...).compile()`), and reports per device what XLA's compiled memory
analysis says (arguments, outputs, temporaries), the state's own share (parameters, optimiser, EMA),
and the step's FLOPs from XLA's cost analysis.

Devices: on a machine without the target accelerator, pass --devices N for N fake CPU devices (XLA:CPU
buffer assignment: same state sizes, temporaries indicative only, no memory limit), or --topology for
a TPU topology compiled ahead of time by libtpu, which needs `jax[tpu]` installed. Topologies are
written as libtpu does (v5e:4x4, v4:2x2x4, v5p:2x2x4, v6e:2x4) or as Cloud TPU slice names (v5e-16,
v5litepod-16, v4-32, v5p-32, v6e-8; see `parse_topology`).

On a TPU topology the compiler knows the chip's HBM: a step that does not fit fails to compile with
RESOURCE_EXHAUSTED, which is reported as an answer (`Plan.fits` False, what it needs against what is
usable) rather than raised. `search_max_batch` finds the largest per-chip batch that compiles, each
candidate in a fresh process (`arjax plan ... --json`) so that XLA's compile memory is returned
between candidates; `plan_variants` tabulates remat x attention implementations.

Cost: one compile is one answer. On a 2-core CPU host (shared with other jobs, 2026-12-02) a plan of
configs/imagenet.py:d16 for v5e:4x4 (fsdp 16, global batch 768) took 106 s wall with remat off and dense
attention (does not fit: out of memory is found early) and 585 s with the recipe's remat on and splash
attention (fits; 542 s of it in XLA). So the search and the table are opt-in (--max-batch: typically
3-8 candidate compiles, capped by --max-compiles; --variants: 4 compiles, 24 min for d16).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

FAKE_DEVICES_FLAG = "--xla_force_host_platform_device_count"
GiB = 2 ** 30


def use_fake_cpu_devices(n: int) -> None:
    """Must run before JAX initialises its backend (the flag is read once)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(FAKE_DEVICES_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{FAKE_DEVICES_FLAG}={n}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


# ---- TPU topologies ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Generation:
    torus_dims: int          # 2: a 2D torus (v5e, v6e), 3: 3D (v4, v5p)
    cores_per_chip: int      # TensorCores per chip, what v4 / v5p slice names count (v4-32 = 16 chips)
    hbm_gib: int             # HBM per chip
    megacore: bool           # both TensorCores of a chip run as one JAX device


# HBM per chip from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
# /v5p, /v6e): v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB. Compile-only devices have no
# memory_stats() ("only supported for addressable PjRt devices"), so the table is the source; what XLA
# may use of it (v5e: 15.75 GiB) is read from the compiler itself, see `usable_hbm_bytes`.
GENERATIONS = {
    "v4": Generation(torus_dims=3, cores_per_chip=2, hbm_gib=32, megacore=True),
    "v5p": Generation(torus_dims=3, cores_per_chip=2, hbm_gib=95, megacore=True),
    "v5e": Generation(torus_dims=2, cores_per_chip=1, hbm_gib=16, megacore=False),
    "v6e": Generation(torus_dims=2, cores_per_chip=1, hbm_gib=32, megacore=False),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}
# jax Device.device_kind of libtpu's devices -> generation
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v5 lite": "v5e", "TPU v5e": "v5e",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: str
    dims: tuple[int, ...]

    @property
    def name(self) -> str:
        """What libtpu's get_topology_desc takes, e.g. "v4:2x2x4"."""
        return f"{self.generation}:{'x'.join(map(str, self.dims))}"

    @property
    def chips(self) -> int:
        return math.prod(self.dims)

    @property
    def spec(self) -> Generation:
        return GENERATIONS[self.generation]


def slice_dims(chips: int, ndim: int) -> tuple[int, ...]:
    """The torus shape of a slice with `chips` chips (a power of two), as Cloud TPU lays slices out:
    double the smallest side, then sort. 2D: 4 -> 2x2, 8 -> 2x4, 16 -> 4x4, 32 -> 4x8, 256 -> 16x16;
    3D: 4 -> 2x2x1, 8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4, 128 -> 4x4x8."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"a TPU slice has a power-of-two number of chips; got {chips}")
    dims = [1] * ndim
    while math.prod(dims) < chips:
        dims[dims.index(min(dims))] *= 2
    out = sorted(dims)
    if ndim == 3 and out[0] == 1:
        out = out[1:] + [1]  # libtpu writes the flat 3D slices with the 1 last: v4:2x2x1
    return tuple(out)


def parse_topology(name: str) -> Topology:
    """"v5e:4x4" / "v4:2x2x4" (generation:torus shape) or a slice name "v5e-16" / "v5litepod-16" /
    "v4-32" / "v5p-32" / "v6e-8". Slice names of v4 and v5p count TensorCores (2 per chip: v4-32 is 16
    chips, 2x2x4), those of v5e and v6e count chips."""
    text = name.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)*))", text)
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in GENERATIONS:
        known = ", ".join(sorted(GENERATIONS))
        raise ValueError(f"unknown TPU topology {name!r}: write generation:shape (v5e:4x4, v4:2x2x4) or a slice "
                         f"name (v5e-16, v5litepod-16, v4-32, v5p-32, v6e-8); generations: {known}")
    spec = GENERATIONS[gen]
    if m.group(2):
        count = int(m.group(2))
        if count % spec.cores_per_chip:
            raise ValueError(f"{name}: {gen} slice names count TensorCores, {spec.cores_per_chip} per chip; "
                             f"{count} is not a multiple of {spec.cores_per_chip}")
        try:
            return Topology(gen, slice_dims(count // spec.cores_per_chip, spec.torus_dims))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    dims = tuple(int(d) for d in m.group(3).split("x"))
    if len(dims) != spec.torus_dims or min(dims) < 1:
        example = "v4:2x2x4" if spec.torus_dims == 3 else "v5e:4x4"
        raise ValueError(f"{name}: a {gen} topology has {spec.torus_dims} positive sides, like {example}")
    return Topology(gen, dims)


def topology_devices(name: str):
    """The compile-only devices of a TPU topology (see `parse_topology` for the names), one per chip."""
    topo = parse_topology(name)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ValueError(f"--topology {name} compiles for TPU ahead of time and needs libtpu: "
                         f"pip install 'jax[tpu]' (or use --devices N for fake CPU devices)") from None
    # libtpu takes /tmp/libtpu_lockfile when it loads, so that two processes never drive the same chips;
    # compile-only devices drive none, and without this a plan fails ("ABORTED: Internal error when
    # accessing libtpu multi-process lockfile") whenever another process (a test run, a training run) has
    # libtpu loaded. Read when the plugin initialises, i.e. before the first topology is made.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    # v4 and v5p chips have two TensorCores that JAX runs as one device ("megacore"). libtpu describes a
    # v4 topology per core by default (v4:2x2x4 gave 32 devices, core_on_chip 0 and 1, and jax.make_mesh's
    # device-mesh helper refuses them: 'Creating meshes for TPU >v3 requires one device per chip');
    # its create option chip_config_name="megacore" (a TpuTopologyArgsProto field; "megacore"/"default"
    # were checked with libtpu 0.0.42.1) gives one device per chip, as a v4 VM runs. v5p is megacore by
    # default; the option is passed for it too and changes nothing there.
    options = {"chip_config_name": "megacore"} if topo.spec.megacore else {}
    devices = topologies.get_topology_desc(topology_name=topo.name, platform="tpu", **options).devices
    if len(devices) != topo.chips:
        raise ValueError(f"libtpu described {topo.name} with {len(devices)} devices, expected one per chip "
                         f"({topo.chips}); this libtpu may not take chip_config_name='megacore'")
    return devices


def chip_of(device) -> str | None:
    """The generation ("v5e") of a TPU device, None for other devices."""
    return DEVICE_KINDS.get(getattr(device, "device_kind", ""))


_USABLE_HBM: dict = {}


def compiler_options(hbm_gib: float | None) -> dict | None:
    """XLA:TPU's own cap on the HBM a program may use (`xla_tpu_max_hbm_size_mib`, a libtpu flag that
    also works as a per-compile option): plan as if the chip had less (headroom for what the step does
    not see, or a small chip in tests). None: the chip's own HBM."""
    if hbm_gib is None:
        return None
    if hbm_gib <= 0:
        raise ValueError(f"--hbm-gib must be positive, got {hbm_gib}")
    return {"xla_tpu_max_hbm_size_mib": max(int(round(hbm_gib * 1024)), 1)}


def usable_hbm_bytes(device, hbm_gib: float | None = None) -> int | None:
    """How much of a TPU device's HBM XLA lets one program use (v5e: 15.75 of 16 GiB), read from the
    compiler: a copy of a 1 TiB array cannot fit, and the RESOURCE_EXHAUSTED message names the HBM
    available. Compiles in milliseconds; None off TPU or when the message is not understood."""
    if getattr(device, "platform", "") != "tpu":
        return None
    kind = (device.device_kind, hbm_gib)
    if kind not in _USABLE_HBM:
        import jax
        import jax.numpy as jnp
        sharding = jax.sharding.SingleDeviceSharding(device)
        x = jax.ShapeDtypeStruct((2 ** 20, 2 ** 20), jnp.uint8, sharding=sharding)
        try:
            jax.jit(lambda a: a + 1, in_shardings=sharding, out_shardings=sharding).lower(x).compile(
                compiler_options(hbm_gib))
            _USABLE_HBM[kind] = None
        except Exception as e:  # noqa: BLE001 -- whatever it says, only a parsed limit is used
            parsed = parse_oom(str(e))
            _USABLE_HBM[kind] = parsed[1] if parsed else None
    return _USABLE_HBM[kind]


# ---- out of memory ----------------------------------------------------------------------------------
_SIZE = r"([\d.]+)\s*([KMGT]?)(?:i?B)?"
OOM_PATTERNS = (
    # libtpu 0.0.42: "Ran out of memory on HBM, the total memory required for HLO temporaries (42.56G)
    # exceeds available HBM (15.75G)." -- the first number is arguments + outputs + temporaries: a step
    # with 10 GiB in and 10 GiB out and no temporaries reports "(20.00G)", donated once "(10.00G)"
    re.compile(rf"required for HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
    # other XLA:TPU versions: "Ran out of memory in memory space hbm. Used 20.5G of 15.48G hbm."
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm", re.IGNORECASE),
)


def _to_bytes(number: str, unit: str) -> int:
    """XLA's human-readable sizes are binary: "20.00G" is 20 GiB (measured: 10 GiB in + 10 GiB out)."""
    return int(round(float(number) * 1024 ** " KMGT".index(unit or " ")))


def parse_oom(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes of HBM available) from XLA's RESOURCE_EXHAUSTED message, else None."""
    for pattern in OOM_PATTERNS:
        m = pattern.search(message)
        if m:
            return _to_bytes(m.group(1), m.group(2)), _to_bytes(m.group(3), m.group(4))
    return None


def is_oom(error: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) and ("memory" in str(error).lower() or parse_oom(str(error)))


# ---- one plan ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    mesh: dict
    devices: int
    device_kind: str
    params_bytes: int          # per device, from the shardings
    opt_bytes: int
    ema_bytes: int
    argument_bytes: int | None  # XLA memory analysis of the compiled step, per device (None: did not fit)
    output_bytes: int | None
    alias_bytes: int | None
    temp_bytes: int | None
    flops: float               # per device per step, XLA cost analysis (see flops_source)
    num_params: int
    batch_size: int = 0        # global
    batch_shards: int = 1      # data x fsdp: the batch is split over these; per-chip batch when tensor=1
    accum_steps: int = 1       # microbatches per step (accum_steps): each chip holds batch / shards / accum at once
    chip: str | None = None    # TPU generation, None on fake CPU devices
    hbm_bytes: int | None = None     # physical HBM per chip (GENERATIONS table)
    hbm_cap_bytes: int | None = None  # --hbm-gib: XLA told to use at most this much
    usable_bytes: int | None = None  # what XLA lets a program use of it (from the compiler)
    fits: bool | None = None         # None: no memory limit known (fake CPU devices)
    needed_bytes: int | None = None  # from RESOURCE_EXHAUSTED when it does not fit
    input_bytes: int = 0       # per device: state + constants + batch, from the shardings (compiled or not)
    state_bytes: int = 0       # per device: the whole train state (the part that does not grow with the batch)
    flops_source: str = "compiled"   # "lowered": HLO before partitioning / devices, when it did not fit;
                                     # "unrolled": the same, of the step with its scanned layers and
                                     # microbatches unrolled;
                                     # "skipped": not counted (flops=False)
    compile_seconds: float = 0.0
    compiled: object = dataclasses.field(default=None, repr=False, compare=False)  # keep_compiled=True
    attn_impl: str | None = None
    remat: bool | None = None
    error: str | None = None   # the compiler's message when it did not fit

    @property
    def peak_bytes(self) -> int:
        """Live at once: inputs, outputs not written in place of a donated input, temporaries (when it
        did not compile: what the compiler said it needs, which is the same sum)."""
        if self.temp_bytes is None:
            return self.needed_bytes or 0
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def temp_estimate(self) -> int:
        """Temporaries; when it did not compile, needed minus the inputs (outputs are written over the
        donated state, so they add only the small metrics)."""
        return self.temp_bytes if self.temp_bytes is not None else max(self.peak_bytes - self.input_bytes, 0)

    @property
    def per_chip_batch(self) -> float:
        return self.batch_size / self.batch_shards

    @property
    def margin(self) -> float | None:
        """Free share of the usable HBM at peak (negative: over by that share)."""
        if not self.usable_bytes:
            return None
        return 1.0 - self.peak_bytes / self.usable_bytes

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "compiled"}
        d.update(peak_bytes=self.peak_bytes, temp_estimate=self.temp_estimate, margin=self.margin,
                 per_chip_batch=self.per_chip_batch)
        return d


def plan(cfg, devices=None, *, hbm_gib: float | None = None, keep_compiled: bool = False, flops: bool = True) -> Plan:
    """Compile `cfg`'s train step for a ("data", "fsdp", "tensor") mesh over `devices` (default: this
    process's devices; `topology_devices(...)` for a TPU topology). A step that does not fit the TPU's
    HBM is a Plan with fits=False and what it needs, not an error. `hbm_gib`: plan as if each chip had
    this much HBM usable (TPU only, see `compiler_options`). `keep_compiled`: the Plan holds the compiled
    step (`.compiled`, e.g. to read its HLO). `flops=False` skips counting FLOPs (0; the batch search's
    candidates need only memory, and counting a scanned step unrolled costs another lowering)."""
    import jax
    import numpy as np

    mesh = plan_mesh(cfg.mesh.to_dict(), devices)
    step, (state, consts, batch, phase), accum, shards = _train_step(cfg, mesh)

    def per_device(tree) -> int:
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    device = mesh.devices.flat[0]
    chip = chip_of(device)
    if hbm_gib is not None and device.platform != "tpu":
        raise ValueError("--hbm-gib caps a TPU's HBM; it needs --topology")
    options = compiler_options(hbm_gib)
    model = cfg.get("model") or {}
    p = Plan(mesh=dict(mesh.shape), devices=mesh.size, device_kind=device.device_kind,
             params_bytes=per_device(state["params"]), opt_bytes=per_device(state["opt_state"]),
             ema_bytes=per_device(state["ema"]), argument_bytes=None, output_bytes=None, alias_bytes=None,
             temp_bytes=None, flops=0.0, num_params=sum(x.size for x in jax.tree.leaves(state["params"])),
             batch_size=cfg.batch_size, batch_shards=shards, accum_steps=accum, chip=chip,
             hbm_bytes=GENERATIONS[chip].hbm_gib * GiB if chip else None,
             hbm_cap_bytes=options["xla_tpu_max_hbm_size_mib"] * 2 ** 20 if options else None,
             usable_bytes=usable_hbm_bytes(device, hbm_gib),
             input_bytes=per_device(state) + per_device(consts) + per_device(batch), state_bytes=per_device(state),
             attn_impl=model.get("attn_impl"), remat=model.get("remat"))
    t0 = time.time()
    with jax.set_mesh(mesh):
        lowered = step.lower(state, consts, batch, phase)
        try:
            compiled = lowered.compile(options)
        except Exception as e:  # noqa: BLE001 -- only out-of-memory is an answer; the rest propagates
            if not is_oom(e):
                raise
            compiled = None
            parsed = parse_oom(str(e))
            p.fits, p.error = False, str(e).strip().splitlines()[0]
            if parsed:
                p.needed_bytes, p.usable_bytes = parsed
    p.compile_seconds = time.time() - t0
    # XLA's cost analysis counts a loop body once: a step with scanned layers or microbatches (a scan too)
    # is counted unrolled
    scanned = bool((cfg.get("model") or {}).get("scan_layers")) or accum > 1
    if not flops:
        p.flops_source = "skipped"
    elif compiled is None or scanned:
        # FLOPs of the step before partitioning, shared evenly; a looped step's unrolled (with XLA attention,
        # which it can count)
        flops = _unrolled_flops(cfg, mesh) if scanned else _lowered_flops(lowered)
        p.flops, p.flops_source = flops / mesh.size, "unrolled" if scanned else "lowered"
    if compiled is None:
        return p
    if keep_compiled:
        p.compiled = compiled
    mem = compiled.memory_analysis()
    p.argument_bytes, p.output_bytes = mem.argument_size_in_bytes, mem.output_size_in_bytes
    p.alias_bytes, p.temp_bytes = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    if flops and not scanned:
        p.flops = _flops(compiled)
    if chip:
        p.fits = True  # XLA:TPU refuses to compile what does not fit
    return p


def _train_step(cfg, mesh):
    """The jitted, sharded train step of `cfg` on `mesh` and its abstract arguments (nothing allocated)."""
    import jax

    from arjax import members, parallel
    from arjax.train.generator_tasks import GeneratorTask
    from arjax.train.trainer import build_optimizer, make_train_step, state_initializer

    shards = parallel.batch_divisor(mesh)
    if cfg.batch_size % shards:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by the {shards} batch shards "
                         f"(data x fsdp of mesh {dict(mesh.shape)})")
    task_cls = members.task_class(cfg.task)
    task = _abstract_task(cfg, task_cls) if issubclass(task_cls, GeneratorTask) else task_cls(cfg)
    tx, _ = build_optimizer(cfg)
    state = parallel.sharded_abstract(state_initializer(task, tx, cfg), mesh)
    state_sh = parallel.shardings_of(state)
    rep, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    consts = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                          jax.eval_shape(task.constants))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
             for k, (shape, dtype) in _batch_spec(cfg, task).items()}
    accum = int(cfg.get("accum_steps", 1) or 1)
    if cfg.batch_size % (shards * accum):
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by the {shards} batch shards x "
                         f"accum_steps={accum} microbatches")
    step = jax.jit(make_train_step(task, tx, cfg.seed, cfg.ema_decay, accum), static_argnums=3, donate_argnums=0,
                   in_shardings=(state_sh, rep, batch_sh), out_shardings=(state_sh, rep))
    return step, (state, consts, batch, task.phase(cfg.steps - 1)), accum, shards


def _unrolled_flops(cfg, mesh) -> float:
    """FLOPs of `cfg`'s step with model.scan_layers off, one microbatch (the same global batch: the same
    work) and XLA attention (a kernel's custom call counts nothing), from the lowered HLO: nothing is
    compiled (compiling the unrolled step takes many minutes)."""
    import jax
    unrolled = cfg.copy_and_resolve_references()
    if "scan_layers" in unrolled.model:
        unrolled.model.scan_layers = False
    unrolled.model.attn_impl, unrolled.accum_steps = "xla", 1
    step, args, _, _ = _train_step(unrolled, mesh)
    with jax.set_mesh(mesh):
        return _lowered_flops(step.lower(*args))


def _flops(stage) -> float:
    try:
        cost = stage.cost_analysis()
    except Exception:  # noqa: BLE001 -- a cost is a nicety; some backends have none
        return 0.0
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def _lowered_flops(lowered) -> float:
    """FLOPs of the whole step before partitioning. Lowered.cost_analysis is not implemented for plugin
    backends such as TPU (PJRT C API), so XLA's HLO cost analysis runs on the host (CPU) client instead;
    it counts HLO ops and knows nothing of kernels (a Pallas / splash custom call counts 0)."""
    try:
        import jax
        from jax._src.lib import _jax
        module = lowered._lowering.hlo().as_hlo_module()
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return float(cost.get("flops", 0.0))
    except Exception:  # noqa: BLE001 -- private API: without it, no FLOPs for a step that did not compile
        return 0.0


def plan_mesh(axes, devices=None):
    """parallel.make_mesh, and where jax's device-mesh helper refuses the device layout (it only knows
    some TPU topologies and mesh shapes: e.g. NotImplementedError for shapes it cannot place on the
    torus, AssertionError for per-core v4 devices), the devices in their given order: for sizing memory
    and FLOPs the order does not matter, only for the speed of the collectives."""
    import jax
    import numpy as np

    from arjax import parallel
    devices = jax.devices() if devices is None else list(devices)
    shape = parallel.mesh_shape(dict(axes or {"fsdp": -1}), len(devices))  # bad input: ValueError, as is
    try:
        return parallel.make_mesh(axes, devices)
    except (AssertionError, NotImplementedError, ValueError):
        auto = (jax.sharding.AxisType.Auto,) * len(parallel.MESH_AXES)
        return jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(shape), parallel.MESH_AXES,
                                 axis_types=auto)


def _abstract_task(cfg, task_cls):
    """A generator task on the trained tokenizer if it exists, else on the layout the config plans with
    (`plan.tokenizer`), else on its member's default tokenizer layout (for VAR the released vae_ch160v4096z32,
    256 px); shapes only: planning reads no weights."""
    from pathlib import Path

    from arjax.train.checkpoint import META_FILE, read_meta
    from arjax import members
    tok_cfg_cls = members.tokenizer_kind(task_cls.member_info().tokenizer).config_cls
    if (Path(cfg.tokenizer_dir) / META_FILE).is_file():
        tok = tok_cfg_cls(**read_meta(cfg.tokenizer_dir)["tokenizer"])
    elif cfg.get("plan") and cfg.plan.get("tokenizer"):
        tok = tok_cfg_cls(**cfg.plan.tokenizer.to_dict())
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


def _tflops(flops: float) -> str:
    t = flops / 1e12
    return f"{t:,.4f}" if t >= 0.1 or t == 0 else f"{t:.4e}"


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.2f}"


def _batch_text(b: float) -> str:
    return f"{b:,.0f}" if float(b).is_integer() else f"{b:,.2f}"


def _size(n: int | None) -> str:
    """GiB, or MiB under one GiB (small models, --hbm-gib caps)."""
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / 2 ** 20:.2f} MiB"


def verdict(p: Plan) -> str:
    """One line: fits (peak, HBM, margin) / DOES NOT FIT (needs X of Y) / no limit known."""
    hbm = f" (of {GENERATIONS[p.chip].hbm_gib} GiB per {p.chip} chip)" if p.chip else ""
    if p.hbm_cap_bytes:
        hbm = f" (capped by --hbm-gib {p.hbm_cap_bytes / GiB:g}; {GENERATIONS[p.chip].hbm_gib} GiB per {p.chip} chip)"
    if p.fits is False:
        if p.needed_bytes is None:
            return f"DOES NOT FIT: {p.error}"
        return (f"DOES NOT FIT: needs {_size(p.needed_bytes)} of {_size(p.usable_bytes)} HBM usable per "
                f"chip{hbm}, over by {_size(p.needed_bytes - p.usable_bytes)}")
    if p.fits and p.usable_bytes and p.peak_bytes > p.usable_bytes:  # seen for d30 on v5e-16 / v6e-8
        return (f"UNVERIFIED: XLA compiled it, but arguments + temporaries ({_size(p.peak_bytes)}) exceed the "
                f"{_size(p.usable_bytes)} HBM usable per chip{hbm}; treat it as not fitting")
    if p.fits and p.usable_bytes:
        return (f"fits: peak {_size(p.peak_bytes)} of {_size(p.usable_bytes)} HBM usable per chip{hbm}, "
                f"margin {100 * p.margin:.1f}%")
    if p.fits:
        return f"fits: peak {_size(p.peak_bytes)} per chip{hbm}"
    return "fits: unknown (fake CPU devices have no memory limit; plan on --topology for a TPU's HBM)"


def format_plan(p: Plan, cfg) -> str:
    mib = 2 ** 20
    compiled = p.temp_bytes is not None
    na = "n/a"
    rows = [
        ("parameters", p.params_bytes), ("optimiser state", p.opt_bytes), ("EMA", p.ema_bytes),
        ("step arguments (state + batch + constants)" if compiled else "inputs (state + batch + constants, shardings)",
         p.argument_bytes if compiled else p.input_bytes),
        ("step outputs (not in place of donated inputs)", p.output_bytes - p.alias_bytes if compiled else None),
        ("step temporaries (activations, gradients)", p.temp_bytes if compiled else p.temp_estimate),
        ("peak estimate" if compiled else "needed (XLA's out-of-memory message)", p.peak_bytes),
    ]
    impl = f"attention {p.attn_impl}, remat {'on' if p.remat else 'off'}; " if p.attn_impl is not None else ""
    lines = [f"{cfg.task}: {p.num_params:,} parameters, global batch {p.batch_size} "
             f"({_batch_text(p.per_chip_batch)} per batch shard x {p.batch_shards} shards"
             f"{f', in {p.accum_steps} microbatches' if p.accum_steps > 1 else ''}), "
             f"mesh {p.mesh} = {p.devices} x {p.device_kind}",
             f"{impl}compiled in {p.compile_seconds:.0f} s",
             f"{'per device':48s} {'MiB':>12s}"]
    for name, v in rows:
        if v is None:
            lines.append(f"  {name:46s} {na:>12s}")
        else:
            approx = "~" if not compiled and name.startswith("step temporaries") else ""
            lines.append(f"  {name:46s} {approx + f'{v / mib:,.3f}':>12s}")
    src = {"compiled": "", "lowered": " [before partitioning / devices]",
           "unrolled": " [layers and microbatches unrolled, XLA attention; before partitioning / devices]",
           "skipped": " [not counted: --no-flops]"}[p.flops_source]
    lines.append(f"  {'TFLOPs per step (this device)':46s} {_tflops(p.flops):>12s}{src}")
    lines.append(f"  {'TFLOPs per step (all devices)':46s} {_tflops(p.flops * p.devices):>12s}")
    lines.append(verdict(p))
    return "\n".join(lines)


# ---- plans in fresh processes: the largest batch, the variants --------------------------------------
@dataclasses.dataclass
class Request:
    """What `arjax plan` was asked: enough to rerun it in a fresh process with more overrides."""
    config: str
    overrides: list
    mesh: str = ""
    topology: str = ""
    devices: int = 0
    hbm_gib: float | None = None

    def command(self, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", "arjax.cli", "plan", "--config", self.config]
        for o in self.overrides:
            cmd += ["--set", o]
        if self.mesh:
            cmd += ["--mesh", self.mesh]
        if self.topology:
            cmd += ["--topology", self.topology]
        if self.devices:
            cmd += ["--devices", str(self.devices)]
        if self.hbm_gib is not None:
            cmd += ["--hbm-gib", repr(self.hbm_gib)]
        return [*cmd, *extra]


PROGRESS = "arjax plan:"
ERROR = "arjax plan: error:"  # how cli.main reports a bad input (exit 2)


def _child_error(stderr_lines, returncode) -> str:
    """The one line that says why a child failed: its `arjax plan: error:` line (libtpu's C++ logging may
    share the line), else the exception line that ends a traceback, else the exit status."""
    text = "".join(stderr_lines)
    found = re.findall(re.escape(ERROR) + r"\s*(.*)", text)
    if found:
        return found[-1].strip()
    exc = [ln.strip() for ln in stderr_lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exhausted)\b", ln)]
    return exc[-1] if exc else f"exit status {returncode}"


def progress(message: str) -> None:
    print(f"{PROGRESS} {message}", file=sys.stderr, flush=True)


def run_child(req: Request, overrides=(), extra=(), timeout: float = 3600) -> dict:
    """`arjax plan --json` in a fresh process (XLA's compile memory goes with it); its progress lines are
    passed on, libtpu's log lines are not. Returns the JSON, or {"error": ...} when the child failed."""
    cmd = req.command(*[a for o in overrides for a in ("--set", o)], *extra, "--json")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    tail, out = [], []

    def pump_err():
        for line in proc.stderr:
            if line.lstrip().startswith(PROGRESS) and ERROR not in line:
                print("  " + line, end="", file=sys.stderr, flush=True)
            tail.append(line)
            del tail[:-200]

    # both pipes drained by threads: a full pipe would block the child
    readers = [threading.Thread(target=pump_err, daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        for t in readers:
            t.join(timeout=60)
    out = "".join(out)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": _child_error(tail, proc.returncode)}
    return json.loads(lines[-1])


@dataclasses.dataclass
class BatchSearch:
    """The largest per-chip batch that fits (0: not even 1), what was compiled on the way, and whether
    the search closed (hi == best + 1) within its budget of compiles."""
    best: int
    hi: int | None                 # smallest per-chip batch known not to fit
    tried: list                    # (per-chip batch, fits, peak bytes) in order
    converged: bool                # closed: hi is the next candidate above best
    best_plan: dict | None = None  # the JSON plan at `best`

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def search_max_batch(evaluate, *, start: int, start_fits: bool, start_peak: int | None, limit: int | None,
                     fixed: int = 0, max_compiles: int = 8) -> BatchSearch:
    """Largest per-chip batch b with evaluate(b) -> (fits, peak bytes or None, plan dict) fitting.

    Peak memory is close to affine in the batch (state + b x activations), so each guess solves the line
    through the measurements nearest the limit, one on each side once both are known (with a single
    measurement: the line from the batch-independent `fixed` bytes through it), clamped strictly inside
    the known bracket. Where XLA's choices bend the line (they do: fusion and rematerialisation change
    with the batch), such guesses crawl from one side; two moves of the same end in a row are followed
    by a bisection step, which keeps the count of compiles logarithmic. Assumes fitting is monotone in
    the batch, which XLA does not promise: the answer is a batch that fits next to one that does not."""
    tried = [(start, start_fits, start_peak)]
    plans: dict = {}
    lo = start if start_fits else 0
    hi = None if start_fits else start
    moved: list[str] = []  # which end each compile moved
    compiles = 0
    while compiles < max_compiles and not (hi is not None and hi == lo + 1):
        crawling = hi is not None and len(moved) >= 2 and moved[-1] == moved[-2]
        guess = None if crawling else _predict(tried, limit, fixed)
        if guess is None:
            guess = lo * 2 if hi is None else (lo + hi) // 2
        if hi is None:
            guess = min(max(guess, lo + 1), max(lo, 1) * 64)  # bound a far extrapolation
        else:
            guess = min(max(guess, lo + 1), hi - 1)
        fits, peak, p = evaluate(guess)
        compiles += 1
        tried.append((guess, fits, peak))
        if fits:
            lo, plans[guess] = guess, p
        else:
            hi = guess
        moved.append("lo" if fits else "hi")
    return BatchSearch(best=lo, hi=hi, tried=tried, converged=hi is not None and hi == lo + 1,
                       best_plan=plans.get(lo))


def _predict(tried, limit, fixed) -> int | None:
    """The batch where the curve through the measurements nearest `limit` crosses it, floored: a
    parabola through three of them once there are three (it follows XLA's bends), else a line (through
    `fixed` at batch 0 when there is one measurement). None when the points say nothing usable."""
    points = sorted({(b, peak) for b, _, peak in tried if peak})
    if not limit or not points:
        return None
    if len(points) == 1:
        points = [(0, fixed), *points]
    near = sorted(sorted(points, key=lambda pt: abs(pt[1] - limit))[:3])
    lo_b, hi_b = min(b for b, _ in points), max(b for b, _ in points)
    if len(near) == 3:
        (x0, y0), (x1, y1), (x2, y2) = near
        # Newton form of the parabola through the three points; its crossing of the limit between the
        # outer points, if it rises there
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        c2 = (d12 - d01) / (x2 - x0)
        c1 = d01 - c2 * (x0 + x1)
        c0 = y0 - c1 * x0 - c2 * x0 * x0
        roots = _real_roots(c2, c1, c0 - limit)
        good = [r for r in roots if lo_b - 1 <= r <= hi_b + 1 and c1 + 2 * c2 * r > 0]
        if good:
            return max(int(math.floor(min(good))), 1)
        near = near[:2] if abs(near[0][1] - limit) < abs(near[2][1] - limit) else near[1:]
    (b0, m0), (b1, m1) = near[-2], near[-1]
    if b1 == b0 or (m1 - m0) / (b1 - b0) <= 0:
        return None
    slope = (m1 - m0) / (b1 - b0)
    return max(int(math.floor(b0 + (limit - m0) / slope)), 1)


def _real_roots(a: float, b: float, c: float) -> list[float]:
    if abs(a) < 1e-30:
        return [] if b == 0 else [-c / b]
    disc = b * b - 4 * a * c
    if disc < 0:
        return []
    r = math.sqrt(disc)
    return [(-b - r) / (2 * a), (-b + r) / (2 * a)]


def max_batch(req: Request, base: Plan, max_compiles: int = 8) -> BatchSearch:
    """Search the largest per-chip batch for `req`, starting from its plan `base` (already compiled);
    every candidate compiles in a fresh `arjax plan --set batch_size=N --json`. With accum_steps > 1
    the candidates are multiples of it (each microbatch keeps whole rows on every chip)."""
    if base.fits is None:
        raise ValueError("--max-batch needs a memory limit: plan on --topology (fake CPU devices have none)")
    shards, unit = base.batch_shards, base.accum_steps
    start = base.batch_size // (shards * unit)

    def evaluate(k: int):
        t0 = time.time()
        b = k * unit
        r = run_child(req, overrides=[f"batch_size={b * shards}"], extra=["--no-flops"])
        if "error" in r:
            raise ValueError(f"planning per-chip batch {b} failed: {r['error']}")
        p = r["plan"]
        state = "fits" if p["fits"] else "does not fit"
        progress(f"per-chip batch {b} (global {b * shards}): {state}, peak {_size(p['peak_bytes'])} "
                 f"({time.time() - t0:.0f} s)")
        return bool(p["fits"]), p["peak_bytes"] or None, p

    progress(f"largest per-chip batch: from {start * unit} ({'fits' if base.fits else 'does not fit'}, "
             f"peak {_size(base.peak_bytes)}), at most {max_compiles} compiles")
    s = search_max_batch(evaluate, start=start, start_fits=bool(base.fits), start_peak=base.peak_bytes or None,
                         limit=base.usable_bytes, fixed=base.state_bytes, max_compiles=max_compiles)
    if unit > 1:
        s.best, s.hi = s.best * unit, s.hi * unit if s.hi is not None else None
        s.tried = [(b * unit, f, m) for b, f, m in s.tried]
    return s


def plan_variants(req: Request, attn_impls=("xla", "splash"), remats=(False, True), with_max_batch=False,
                  max_compiles: int = 8) -> list[dict]:
    """One fresh-process plan per (remat, attention impl); rows of JSON plans or errors."""
    rows = []
    for remat in remats:
        for impl in attn_impls:
            t0 = time.time()
            progress(f"variant remat {'on' if remat else 'off'}, attention {impl} ...")
            extra = ["--max-batch", "--max-compiles", str(max_compiles)] if with_max_batch else []
            r = run_child(req, overrides=[f"model.remat={remat}", f"model.attn_impl={impl}"], extra=extra)
            r.update(remat=remat, attn_impl=impl, seconds=time.time() - t0)
            rows.append(r)
    return rows


def format_search(s: BatchSearch, shards: int, unit: int = 1) -> str:
    steps = ", ".join(f"{b}:{'fits' if f else 'no'}" for b, f, _ in s.tried)
    if s.best == 0:
        head = "largest per-chip batch: none fits, not even 1 per chip"
    else:
        head = f"largest per-chip batch: {s.best} (global batch {s.best * shards})"
        if s.best_plan and s.best_plan.get("margin") is not None:
            head += f", peak {_size(s.best_plan['peak_bytes'])}, margin {100 * s.best_plan['margin']:.1f}%"
    if not s.converged:
        head += f"; search stopped before closing: {s.hi if s.hi else '?'} is the smallest known not to fit " \
                f"(raise --max-compiles)"
    elif s.hi:
        head += f"; {s.hi} does not fit"
    if unit > 1:
        head += f" (multiples of accum_steps={unit})"
    return f"{head}\n  compiled (per-chip batch:result): {steps}"


def format_variants(rows: list[dict], with_max_batch: bool) -> str:
    """A markdown table, pasteable into a README."""
    head = ["remat", "attention", "per-chip peak GiB", "temporaries GiB", "TFLOPs/step/chip", "fits (margin)"]
    if with_max_batch:
        head.append("max per-chip batch")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ["on" if r["remat"] else "off", r["attn_impl"]]
        if "error" in r:
            cells += ["-", "-", "-", f"error: {r['error'][:120]}"]
            if with_max_batch:
                cells.append("-")
        else:
            p = r["plan"]
            compiled = p["temp_bytes"] is not None
            cells += [_gib(p["peak_bytes"]), ("" if compiled else "~") + _gib(p["temp_estimate"]),
                      f"{p['flops'] / 1e12:,.2f}" + ("" if p["flops_source"] == "compiled" else "*")]
            if p["fits"] is None:
                cells.append("n/a (no limit)")
            elif p["fits"]:
                cells.append(f"yes ({100 * p['margin']:.1f}%)" if p["margin"] is not None else "yes")
            else:
                cells.append(f"no (needs {_gib(p['needed_bytes'])} of {_gib(p['usable_bytes'])})")
            if with_max_batch:
                s = r.get("max_batch")
                cells.append("-" if not s else (str(s["best"]) + ("" if s["converged"] else "?")))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any("error" not in r and r["plan"]["flops_source"] != "compiled" for r in rows):
        notes.append("* XLA's FLOPs of the unpartitioned, unoptimised step / devices (not comparable with compiled "
                     "rows): it did not compile, or its layers or microbatches are scanned and it was counted unrolled with XLA "
                     "attention (XLA counts a loop body once); ~ temporaries: needed minus the inputs")
    if with_max_batch and any((r.get("max_batch") or {}).get("converged") is False for r in rows):
        notes.append("? the search stopped before closing: the largest batch found to fit (raise --max-compiles)")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
