"""Sharding: the mesh and rules table, and training on 8 fake CPU devices for several meshes, which must
give one device's losses and parameters, with parameters and optimiser state really split (read from
the live arrays by the trainer's sharding.json, not from the rules)."""
import json

import jax
import numpy as np
import pytest

from arjax import parallel

MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
# All with -m slow (~1.5 min each on 2 busy cores; the 15 min budget). The default suite keeps sharded training
# in test_multiprocess (two processes, data x FSDP, against one device), and tensor parallelism as a compiled
# TPU step in test_tpu_aot and as partition specs below.
PARAMS = [pytest.param(m, id="x".join(map(str, m)), marks=pytest.mark.slow) for m in MESHES]


# ---- rules ------------------------------------------------------------------------------------------
def test_mesh_shape_fills_minus_one_and_names_bad_axes():
    assert parallel.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    assert parallel.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="at most one"):
        parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="'model'"):
        parallel.mesh_shape({"model": 2}, 8)


class _FakeMesh:
    def __init__(self, data, fsdp, tensor):
        self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.mark.parametrize("path,shape,mesh,want", [
    # tensor parallel on the logical dims, FSDP on the largest remaining divisible dim
    ("blocks/0/ffn/fc1/kernel", (64, 256), (1, 4, 2), ("fsdp", "tensor")),
    ("blocks/0/ffn/fc2/kernel", (256, 64), (1, 4, 2), ("tensor", "fsdp")),
    ("blocks/0/attn/mat_qkv/kernel", (64, 192), (1, 4, 2), ("fsdp", "tensor")),
    # optimiser state: the same rows match through the path suffix
    ("1/0/mu/blocks/3/attn/proj/kernel", (64, 64), (1, 2, 4), ("tensor", "fsdp")),
    # without tensor parallelism FSDP takes the largest dim
    ("blocks/0/ffn/fc1/kernel", (64, 256), (2, 4, 1), (None, "fsdp")),
    ("head/kernel", (64, 4096), (1, 8, 1), (None, "fsdp")),
    ("head_nm/ada_lin/kernel", (64, 128), (1, 1, 4), (None, None)),  # not a "head": no tensor rule
    # nothing divisible: replicated; pure data parallelism: replicated
    ("blocks/0/attn/scale_mul_1H11", (1, 6, 1, 1), (1, 4, 1), (None, None, None, None)),
    ("blocks/0/ffn/fc1/kernel", (64, 256), (8, 1, 1), (None, None)),
])
def test_partition_specs_follow_the_rules(path, shape, mesh, want):
    assert tuple(parallel.spec_for(path, shape, _FakeMesh(*mesh))) == want


# ---- training on meshes -----------------------------------------------------------------------------
def _losses(workdir):
    return [h["loss"] for h in json.loads((workdir / "summary.json").read_text())["history"]]


def _final_params(workdir):
    import arjax
    from flax import nnx
    state = nnx.to_pure_dict(arjax.load(workdir / "model").state)
    return {parallel.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory, tiny_tokenizer_dir, run_worker):
    """Each mesh trained once, in its own 8-device process."""
    runs = {}

    def get(mesh):
        if mesh not in runs:
            wd = tmp_path_factory.mktemp("mesh_" + "x".join(map(str, mesh)))
            run_worker(["train", wd, tiny_tokenizer_dir, *mesh], devices=8)
            runs[mesh] = wd
        return runs[mesh]
    return get


@pytest.mark.parametrize("mesh", PARAMS)
def test_sharded_training_matches_one_device(mesh, mesh_runs, reference_run):
    wd = mesh_runs(mesh)
    # float32 tolerance: the sharded step sums gradients in another order
    np.testing.assert_allclose(_losses(wd), _losses(reference_run), rtol=2e-5)
    got, want = _final_params(wd), _final_params(reference_run)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("mesh", PARAMS)
def test_parameters_and_optimiser_state_are_really_sharded(mesh, mesh_runs):
    data, fsdp, tensor = mesh
    report = json.loads((mesh_runs(mesh) / "sharding.json").read_text())
    leaves = report["leaves"]
    fc1 = leaves["params/blocks/0/ffn/fc1/kernel"]  # (64, 256): mlp dim over tensor, then FSDP
    want = [64, 256 // tensor] if tensor > 1 else [64, 256]
    want[0 if tensor > 1 else 1] //= fsdp
    assert fc1["shard"] == want, fc1
    # every optimiser moment is split exactly like its parameter
    moments = {k: v for k, v in leaves.items() if k.startswith("opt_state/") and ("/mu/" in k or "/nu/" in k)}
    assert moments
    for k, v in moments.items():
        param = "params/" + k.split("/mu/" if "/mu/" in k else "/nu/", 1)[1]
        assert v["shard"] == leaves[param]["shard"], k
    # and one device holds about 1 / (fsdp x tensor) of the state (biases, norms may stay whole)
    split = fsdp * tensor
    if split == 1:
        assert report["bytes_per_device"] == report["bytes_total"]
    else:
        assert report["bytes_per_device"] < 1.5 * report["bytes_total"] / split


# ---- sampling ---------------------------------------------------------------------------------------
def test_sampling_splits_the_batch_over_all_devices_with_the_same_samples(run_worker, tmp_path):
    one, four = tmp_path / "one.npz", tmp_path / "four.npz"
    run_worker(["sample", one], devices=1)
    run_worker(["sample", four], devices=4)
    with np.load(one) as a, np.load(four) as b:
        assert int(a["devices"]) == 1 and int(b["devices"]) == 4
        np.testing.assert_array_equal(b["tokens"], a["tokens"])
        np.testing.assert_allclose(b["images"], a["images"], atol=1e-5)


def test_a_workdir_may_resume_on_another_mesh_or_microbatching_but_not_with_another_recipe(tmp_path):
    from arjax.config import load_config
    from arjax.train.trainer import _check_same_config
    from conftest import REPO
    config = f"{REPO}/configs/quickstart.py:var"
    _check_same_config(load_config(config, ["mesh.fsdp=-1"]), tmp_path)
    _check_same_config(load_config(config, ["mesh.data=2", "mesh.fsdp=4"]), tmp_path)
    with pytest.raises(ValueError, match="steps"):
        _check_same_config(load_config(config, ["steps=5"]), tmp_path)
    _check_same_config(load_config(config, ["accum_steps=2"]), tmp_path)  # same global batch, in 2 pieces
    # a run started before data.cache_views existed resumes at the default that reproduces it
    import json
    old = json.loads((tmp_path / "config.json").read_text())
    del old["data"]["cache_views"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_same_config(load_config(config), tmp_path)
    with pytest.raises(ValueError, match="cache_views"):
        _check_same_config(load_config(config, ["data.cache_views=4"]), tmp_path)
