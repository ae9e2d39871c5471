"""Meshes, shardings and multi-host set-up, in one place.

One mesh with axes ("data", "fsdp", "tensor"). Batches are split over data x fsdp. Parameters get
logical dimension names from a short path table (PARAM_DIMS); RULES maps logical names to mesh axes
(tensor parallelism for attention and MLP); FSDP then shards, per parameter, the largest dimension
still free whose size the fsdp axis divides (big_vision's rule). Optimiser-state leaves end with their
parameter's path, so they match the same rows and are sharded like the parameter.

    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})        # -1 takes the remaining devices
    shardings = tree_shardings(jax.eval_shape(init_state), mesh)   # then jit(init, out_shardings=...)

Everything is plain JAX: `jax.jit` with in/out shardings, XLA collectives, `jax.distributed`.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("arjax.parallel")

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical dimension name -> mesh axis
RULES = {"batch": BATCH_AXES, "qkv": "tensor", "heads": "tensor", "mlp": "tensor", "vocab": "tensor"}

# parameter path (suffix, "/"-joined) -> logical names of its dimensions; None = free for FSDP
PARAM_DIMS = (
    (r"attn/mat_qkv/kernel$", (None, "qkv")),
    (r"attn/(q_bias|v_bias)$", ("heads",)),
    (r"attn/proj/kernel$", ("heads", None)),
    (r"ffn/fc1/kernel$", (None, "mlp")),
    (r"ffn/fc1/bias$", ("mlp",)),
    (r"ffn/fc2/kernel$", ("mlp", None)),
    (r"(^|/)head/kernel$", (None, "vocab")),
    (r"(^|/)head/bias$", ("vocab",)),
)


# ---- mesh ------------------------------------------------------------------------------------------
def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor); one of them may be -1: it takes the devices left over."""
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axis {sorted(unknown)[0]!r}; the mesh axes are {', '.join(MESH_AXES)}")
    sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1; got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1; got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices; "
                         f"there are {num_devices}")
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all processes).

    Axis types are Auto: the compiler propagates shardings from the ones we pin (state, batch)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(dict(axes or {"fsdp": -1}), len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


# ---- parameter and state shardings -----------------------------------------------------------------
def path_str(path) -> str:
    """A key path as "blocks/0/attn/proj/kernel" (optax state paths end with the parameter's)."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def logical_dims(path: str, ndim: int) -> tuple:
    for pattern, names in PARAM_DIMS:
        if re.search(pattern, path) and len(names) == ndim:
            return names
    return (None,) * ndim


def spec_for(path: str, shape, mesh: Mesh) -> P:
    """Logical names through RULES, then FSDP on the largest free dimension the fsdp axis divides."""
    spec = []
    for size, name in zip(shape, logical_dims(path, len(shape))):
        axis = RULES.get(name) if name else None
        if axis is not None and (_axis_size(mesh, axis) == 1 or size % _axis_size(mesh, axis)):
            axis = None  # a size-1 axis splits nothing; an indivisible dimension stays whole
        spec.append(axis)
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1:
        free = [i for i, a in enumerate(spec) if a is None and shape[i] % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = "fsdp"
    return P(*spec)


def _axis_size(mesh: Mesh, axis) -> int:
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for every leaf of an (abstract) state tree; scalars are replicated."""
    def one(path, x):
        return NamedSharding(mesh, spec_for(path_str(path), x.shape, mesh) if x.ndim else P())
    return jax.tree_util.tree_map_with_path(one, tree)


def sharded_abstract(init_fn, mesh: Mesh):
    """The shapes `init_fn()` would produce, as ShapeDtypeStructs carrying their shardings: what a state is
    created into (`jit(init_fn, out_shardings=...)`), restored onto, or compiled against, without allocating."""
    shapes = jax.eval_shape(init_fn)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        tree_shardings(shapes, mesh))


def shardings_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    return _axis_size(mesh, BATCH_AXES)


def global_batch(local_batch, mesh: Mesh):
    """This process's rows of the batch -> global jax.Arrays split over data x fsdp."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def constrain(x, *names):
    """Pin an activation's sharding by logical names (e.g. "batch", None, None) inside a mesh context;
    outside one (a plain single-device call) it does nothing."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, P(*(RULES.get(n) if n else None for n in names)))


def shard_report(tree) -> dict:
    """Per leaf of a live (sharded) tree: global shape, partition spec and the shape held by one device,
    read from the arrays themselves; plus the bytes one device holds against the whole tree's."""
    leaves, total, per_device = {}, 0, 0
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shard = x.addressable_shards[0].data.shape
        leaves[path_str(path)] = {"shape": list(x.shape), "spec": str(x.sharding.spec), "shard": list(shard)}
        total += x.size * x.dtype.itemsize
        per_device += int(np.prod(shard)) * x.dtype.itemsize
    return {"bytes_total": int(total), "bytes_per_device": int(per_device), "leaves": leaves}


# ---- processes -------------------------------------------------------------------------------------
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "ARJAX_COORDINATOR", "ARJAX_NUM_PROCESSES", "ARJAX_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, heartbeat_timeout_s: int = 30) -> bool:
    """Join a multi-process run; returns True when one was joined.

    TPU pods need no arguments (the TPU runtime describes the slice). GPU and CPU take the coordinator
    address, process count and id from the arguments or from ARJAX_COORDINATOR / ARJAX_NUM_PROCESSES /
    ARJAX_PROCESS_ID. With none of these, on CPU or GPU, this is a single-process run and nothing is done.
    On CPU the collectives go over gloo (TCP), which is how tests run 2 processes on one machine.
    A dead peer is noticed within `heartbeat_timeout_s` and the survivors stop with an error.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit:
        if not _on_tpu_pod():
            return False
        jax.distributed.initialize()
        return True
    missing = [name for name, v in ((ENV_COORDINATOR, coordinator), (ENV_NUM_PROCESSES, num_processes),
                                    (ENV_PROCESS_ID, process_id)) if v is None]
    if missing:
        raise ValueError(f"a multi-process run needs the coordinator address, the process count and this "
                         f"process's id; missing: {', '.join(missing)}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"{ENV_PROCESS_ID}={process_id} must lie in [0, {ENV_NUM_PROCESSES}={num_processes})")
    if _platform() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_s,
                               initialization_timeout=120)
    log.info("process %d of %d joined %s", process_id, num_processes, coordinator)
    return True


def _platform() -> str:
    """The backend that will run, read without initialising it (initialising first would fix the
    process to one-process mode before jax.distributed could be set up)."""
    forced = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
    if forced:
        return forced.split(",")[0]
    try:
        import jax_cuda12_plugin  # noqa: F401
        return "gpu"
    except ImportError:
        return "tpu" if _libtpu_present() else "cpu"


def _libtpu_present() -> bool:
    """libtpu installed AND a TPU attached: `pip install .[tpu]` also brings libtpu to CPU machines, where it
    only compiles ahead of time (arjax plan --topology). TPU VMs expose their chips as /dev/accel* (v2-v5e)
    or /dev/vfio/* (v5p, v6e)."""
    import glob
    import importlib.util
    return (importlib.util.find_spec("libtpu") is not None
            and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def _on_tpu_pod() -> bool:
    """Multi-host TPU VMs advertise their workers; one-host slices run single-process."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return _libtpu_present() and len([h for h in hosts.split(",") if h]) > 1


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of a multi-process run got here; nothing to do in a single process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
