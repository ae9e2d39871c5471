"""The one module that talks to orbax.

A model directory holds `arjax.json` (family, model configs, provenance) and `params/`, an orbax
checkpoint of the pure-dict parameter tree `{"tokenizer": ..., "model": ...}`. Restoring goes
against an abstract tree, so the target dtypes (and, with shardings, the target mesh) are honoured.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

META_FILE = "arjax.json"
PARAMS_DIR = "params"


def check_new_model_dir(directory) -> Path:
    """The parameters folder a model directory would get; an error if it holds one already (converters
    call this before reading large checkpoints)."""
    target = Path(directory).absolute() / PARAMS_DIR
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose an empty output directory")
    return target


def save_model(directory, meta: dict, params) -> Path:
    """Write `meta` (JSON-serialisable) and the `params` pytree under `directory`."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    target = check_new_model_dir(directory)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(target, params)
    ckptr.wait_until_finished()
    if jax.process_index() != 0:  # the parameters are written by all processes, the metadata by one
        return directory
    tmp = directory / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, directory / META_FILE)  # the metadata file appears last: its presence means complete
    return directory


def read_meta(directory) -> dict:
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an arjax model directory: {META_FILE} is missing "
            f"(create one with `arjax convert var ...` or `arjax train`)")
    return json.loads(path.read_text())


def _restore_target(abstract):
    """ShapeDtypeStructs with a sharding on every leaf: the leaf's own, else this process's first device
    (orbax needs a target layout to restore a checkpoint written by another device count)."""
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or here),
                        abstract)


def load_params(directory, abstract_params, *, partial: bool = False):
    """Restore the params tree onto the structure, dtypes and shardings of `abstract_params`; with
    `partial`, top-level entries on disk but not in the target are skipped (a full model's tokenizer)."""
    target = _restore_target(abstract_params)
    path = Path(directory).absolute() / PARAMS_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the model directory is incomplete")
    try:
        if partial:
            with ocp.PyTreeCheckpointer() as ckpt:
                return ckpt.restore(path, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        return ocp.StandardCheckpointer().restore(path, target)
    except ValueError as e:  # orbax reports structure / shape mismatches as ValueError
        raise ValueError(f"checkpoint {path} does not match the model described by {META_FILE}: {e}") from e


class RunCheckpointer:
    """Training checkpoints of one run: the train state and the data iterator, saved together by an
    orbax CheckpointManager (async, keep-last-N). Orbax writes each step to a temporary directory and
    renames it when complete, so a kill mid-write leaves the previous checkpoints restorable."""

    def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def data_process_count(self, step: int) -> int | None:
        """How many processes saved the data iterator of `step` (grain writes one file per process)."""
        files = list((self.directory / str(step) / "data").glob("process_*-of-*.json"))
        return int(files[0].stem.rsplit("-of-", 1)[1]) if files else None

    def save(self, step: int, state, data_iterator=None) -> None:
        import grain
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """Restore `step` (default: latest) onto `abstract_state`; the iterator is restored in place."""
        import grain
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(_restore_target(abstract_state))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
