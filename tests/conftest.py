"""Shared test fixtures. Parity data lives in ../shared/fixtures (or $ARJAX_FIXTURES); tests that need
it skip with a reason when it is absent, so a plain user checkout still runs the suite."""
import os
import tempfile
from pathlib import Path

# One persistent XLA compilation cache per test session, inherited through the environment by every
# subprocess a test starts, so an identical program under a fresh jax.jit is not compiled again (its own
# effect on the suite's time was not measured apart from pytest-xdist's: 2026-12-07). Off with
# ARJAX_TEST_COMPILE_CACHE=0.
if os.environ.get("ARJAX_TEST_COMPILE_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="arjax_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # A size limit makes jax lock the folder around each read and write (filelock), so concurrent test
    # processes (pytest-xdist workers, a test's subprocesses) never read an entry another is writing.
    import importlib.util
    if importlib.util.find_spec("filelock"):  # without it jax refuses a size limit
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

# XLA:CPU without backend (LLVM) optimisation: most of this suite's time is compiling tiny programs that then
# run for milliseconds, and unoptimised code compiles faster (tests/test_train_recipe.py alone: 120 -> 90 s,
# 2026-12-08). The programs' HLO is the same; results may differ from optimised code's in the last float32
# bit, which every tolerance here allows for. Off with ARJAX_TEST_OPTIMISED_XLA=1. Inherited by subprocesses
# (worker_env and launch/local.py keep XLA_FLAGS' other flags).
UNOPTIMISED_XLA = "--xla_backend_optimization_level=0"
if os.environ.get("ARJAX_TEST_OPTIMISED_XLA", "0") != "1" and "xla_backend_optimization_level" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {UNOPTIMISED_XLA}".strip()

import jax  # noqa: E402  (after the cache's and XLA's environment, which jax reads at import)
import numpy as np
import pytest

# Parity checks compare float32 numerics: never let an accelerator downgrade matmul precision.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ARJAX_FIXTURES", REPO.parent / "shared" / "fixtures"))


def fixture_dir(name: str) -> Path:
    d = FIXTURES / name
    if not (d / "cases.npz").is_file():
        pytest.skip(reason=f"parity fixture {d} is absent (set ARJAX_FIXTURES to the shared/fixtures folder)")
    return d


@pytest.fixture(scope="session")
def var_tiny_files() -> Path:
    return fixture_dir("var_tiny")


@pytest.fixture(scope="session")
def var_cases(var_tiny_files):
    with np.load(var_tiny_files / "cases.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def var_tiny_dir(var_tiny_files, tmp_path_factory) -> Path:
    """The var_tiny fixture converted once into an arjax model directory."""
    from arjax.convert.var import convert_var
    out = tmp_path_factory.mktemp("var_tiny") / "model"
    return convert_var(var_tiny_files / "vae.safetensors", var_tiny_files / "var.safetensors", out)


@pytest.fixture(scope="session")
def var_tiny_pipe(var_tiny_dir):
    import arjax
    return arjax.load(var_tiny_dir)


def nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def xla_flags_without(prefix: str) -> list[str]:
    """This process's XLA_FLAGS less those starting with `prefix` (for a subprocess that sets its own)."""
    return [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(prefix)]


def optimised_xla_env() -> dict:
    """This environment without the suite's unoptimised-XLA flag: for a subprocess whose run is compute-bound."""
    return {**os.environ, "XLA_FLAGS": " ".join(xla_flags_without("--xla_backend_optimization_level"))}


# ---- multi-device / multi-process tests (tests/multidevice_worker.py in fresh processes) -----------
WORKER = REPO / "tests" / "multidevice_worker.py"


def worker_env(devices: int, **extra) -> dict:
    """A fresh process with `devices` fake CPU devices (XLA reads the flag once, at start-up)."""
    flags = [*xla_flags_without("--xla_force_host_platform_device_count"),
             f"--xla_force_host_platform_device_count={devices}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    env.pop("ARJAX_COORDINATOR", None)
    return {**env, **{k: str(v) for k, v in extra.items()}}


@pytest.fixture(scope="session")
def run_worker():
    import subprocess
    import sys

    def run(args, devices, **env):
        r = subprocess.run([sys.executable, str(WORKER), *map(str, args)], env=worker_env(devices, **env),
                           capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise AssertionError(f"worker {args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
        return r
    return run


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, run_worker) -> Path:
    out = tmp_path_factory.mktemp("tiny_tok") / "model"
    run_worker(["tokenizer", out], devices=1)
    return out


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_tokenizer_dir, run_worker) -> Path:
    """The tiny VAR trained 4 steps on one device: what every mesh and process layout must reproduce."""
    wd = tmp_path_factory.mktemp("reference_1dev")
    run_worker(["train", wd, tiny_tokenizer_dir, 1, 1, 1], devices=1)
    return wd


def maxerr(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def assert_close(name, got, want, atol):
    """Parity check that prints the measured error (visible with -s) before asserting."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    err = maxerr(got, want)
    print(f"[parity] {name}: max abs err {err:.3g} (atol {atol:g})")
    assert err <= atol, f"{name}: max abs err {err:.3g} > atol {atol:g}"


@pytest.fixture(scope="session")
def builtin_classifier_dir(tmp_path_factory) -> Path:
    """The built-in dataset's 32 px evaluation classifier, trained once per test session (1000 steps),
    at the cache layout `arjax eval` looks for. Trained in a process with XLA's default optimisation: its
    1000 steps are compute-bound (54 s under the suite's load; 120 s unoptimised, 2026-12-08)."""
    import subprocess
    import sys

    from arjax.eval import classifier
    out = classifier.classifier_path(32, tmp_path_factory.mktemp("classifier"))
    code = ("import sys; from arjax.eval import classifier; "
            "classifier.train_classifier(32, steps=1000, batch_size=32, seed=0, out_dir=sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, str(out)], env=optimised_xla_env(), capture_output=True, text=True)
    assert r.returncode == 0, f"training the classifier failed:\n{r.stderr[-5000:]}"
    return out


def float64_cross_entropy(logits, target, ls=0.0):
    """torch's F.cross_entropy(reduction='none', label_smoothing=ls), in float64 NumPy."""
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(target)[..., None], -1)[..., 0]
    return (1 - ls) * nll - ls * logp.mean(-1)


def tiny_builtin_var(patch_nums=(1, 2, 4)):
    """A randomly initialised 32 px VAR pipeline with the built-in dataset's ten class names."""
    import dataclasses

    import arjax
    from arjax.data.synthetic import CLASS_NAMES
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    tok = VQVAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, vocab_size=64, z_channels=8,
                      patch_nums=patch_nums, using_sa=False, using_mid_sa=False)
    model = VARConfig(depth=1, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=patch_nums,
                      num_classes=10)
    return arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(model),
                        "class_names": CLASS_NAMES})


# ---- FID protocol (../shared/fixtures/fid) --------------------------------------------------------
def fid_fixture_dir() -> Path:
    d = FIXTURES / "fid"
    if not (d / "inception_cases.npz").is_file():
        pytest.skip(reason=f"FID fixture {d} is absent (set ARJAX_FIXTURES to the shared/fixtures folder)")
    return d


@pytest.fixture(scope="session")
def fid_inception_file(tmp_path_factory) -> Path:
    """The fixture's random-weight pytorch-fid Inception, rebuilt by its make_weights.py as .safetensors."""
    import importlib.util

    from safetensors.numpy import save_file
    d = fid_fixture_dir()
    spec = importlib.util.spec_from_file_location("fid_make_weights", d / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("fid_weights") / "inception_random.safetensors"
    save_file({k: v for k, v in module.make_weights(0).items() if not k.endswith("num_batches_tracked")}, str(out))
    return out


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4. Each worker's XLA already runs a step on every core, so
    more workers only share them; two on two cores still overlap one's compiling with another's running."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(config, items):
    """ARJAX_TEST_SHARD=k/n keeps the k-th of n fixed shares of the selected tests (by a hash of each test's
    id). .ci/run runs the slow set one share per run, taking turns by date, so that every slow test runs
    within n CI runs while CI stays under its time limit."""
    shard = os.environ.get("ARJAX_TEST_SHARD")
    if not shard:
        return
    import zlib
    try:
        k, n = (int(v) for v in shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"ARJAX_TEST_SHARD={shard!r}: expected k/n with 0 <= k < n, e.g. 0/2") from None
    keep, drop = [], []
    for it in items:
        (keep if zlib.crc32(it.nodeid.encode()) % n == k else drop).append(it)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
