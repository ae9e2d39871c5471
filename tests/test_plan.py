"""`arjax plan`: the compiled step's per-device memory and FLOPs on fake CPU devices, checked against
counts made independently of XLA (parameter bytes, 6 x parameters x tokens)."""
import re
import subprocess
import sys

import pytest

from conftest import REPO, worker_env


def _plan(*args, devices_env=1):
    r = subprocess.run([sys.executable, "-m", "arjax.cli", "plan", *args], env=worker_env(devices_env),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    return r


def _row(text, name):
    return float(re.search(rf"{re.escape(name)}\s+([\d.,]+)", text).group(1).replace(",", ""))


def test_plan_reports_sharded_state_and_flops(tiny_tokenizer_dir):
    r = _plan("--config", "configs/quickstart.py:var", "--set", f"tokenizer_dir={tiny_tokenizer_dir}",
              "--set", "model.depth=2", "--set", "model.embed_dim=64", "--set", "model.num_heads=4",
              "--set", "batch_size=16", "--set", "data.cache_tokens=true", "--devices", "4", "--mesh", "data=1,fsdp=4")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} = 4 x cpu" in out
    n = int(re.search(r"([\d,]+) parameters", out).group(1).replace(",", ""))
    # FSDP over 4: a quarter of the float32 parameters per device (a few small vectors stay whole)
    params_mib = _row(out, "parameters")
    assert n * 4 / 4 / 2**20 * 0.95 < params_mib < n * 4 / 4 / 2**20 * 1.3
    assert _row(out, "optimiser state") == pytest.approx(2 * params_mib, rel=0.05)  # Adam's two moments
    # training FLOPs ~ 6 x matmul parameters x tokens (tiny tokenizer: patch_nums (1,2,4) -> 21 tokens);
    # attention and the norms add a little on top
    d, c, v, tokens = 2, 64, 64, 16 * 21
    matmul = d * (c * 3 * c + c * c + 2 * c * 4 * c + c * 6 * c) + c * 2 * c + c * v
    analytic = 6 * matmul * tokens / 1e12
    total = _row(out, "TFLOPs per step (all devices)")
    assert analytic * 0.8 < total < analytic * 2.0, (total, analytic)


def test_plan_names_what_is_missing():
    r = _plan("--config", "configs/quickstart.py:var", "--topology", "v5e:4x4")
    assert r.returncode == 2 and "libtpu" in r.stderr
    r = _plan("--config", "configs/quickstart.py:var", "--devices", "4", "--mesh", "data=3")
    assert r.returncode == 2 and "not divisible by 3" in r.stderr
