"""Two processes x 4 fake CPU devices over loopback (gloo collectives), started by launch/local.py: they
train like one process on one device, their checkpoint restores in one process with 8 devices and in
one with 1 device (data iterator included), and a killed process makes the other fail fast; rerunning
resumes from the last checkpoint."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, WORKER, worker_env

LAUNCHER = REPO / "launch" / "local.py"


def _launch(args, processes=2, devices=4, timeout=900):
    env = worker_env(1)
    r = subprocess.run([sys.executable, str(LAUNCHER), "--processes", str(processes), "--devices", str(devices),
                        "--", sys.executable, str(WORKER), *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return r


def _losses(workdir):
    return [h["loss"] for h in json.loads((workdir / "summary.json").read_text())["history"]]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_tokenizer_dir):
    wd = tmp_path_factory.mktemp("two_processes")
    r = _launch(["train", wd, tiny_tokenizer_dir, 2, 4, 1])
    assert r.returncode == 0, r.stderr[-5000:]
    return wd


def test_two_processes_train_like_one_device(two_process_run, reference_run):
    np.testing.assert_allclose(_losses(two_process_run), _losses(reference_run), rtol=2e-5)
    report = json.loads((two_process_run / "sharding.json").read_text())
    assert report["bytes_per_device"] < report["bytes_total"] / 2  # FSDP over 4 devices per process


@pytest.mark.parametrize("devices,mesh", [(8, (1, 8, 1)), pytest.param(1, (1, 1, 1), marks=pytest.mark.slow)])
def test_checkpoint_restores_on_another_device_count(devices, mesh, two_process_run, reference_run, tiny_tokenizer_dir,
                                                     run_worker, tmp_path):
    got, want = tmp_path / "got.npz", tmp_path / "want.npz"
    run_worker(["restore", two_process_run, tiny_tokenizer_dir, *mesh, got], devices=devices)
    run_worker(["restore", reference_run, tiny_tokenizer_dir, 1, 1, 1, want], devices=1)
    with np.load(got) as g, np.load(want) as w:
        assert int(g["step"]) == int(w["step"]) == 4
        # the data iterator (saved by 2 processes, repositioned here) yields the batch the 1-process run would
        np.testing.assert_array_equal(g["next_tokens"], w["next_tokens"])
        state = [k for k in w.files if k.startswith("state/")]
        assert any("opt_state" in k for k in state) and set(state) == {k for k in g.files if k.startswith("state/")}
        for k in state:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.mark.slow  # ~1.5 min: 60 steps, a kill, and the rerun
def test_a_killed_process_stops_the_other_and_a_rerun_resumes(tmp_path, tiny_tokenizer_dir):
    wd = tmp_path / "run"
    args = [sys.executable, str(WORKER), "train", wd, tiny_tokenizer_dir, 2, 4, 1, 60]
    env = {"ARJAX_COORDINATOR": f"127.0.0.1:{_free_port()}", "ARJAX_NUM_PROCESSES": 2}
    procs = [subprocess.Popen(list(map(str, args)), env=worker_env(4, ARJAX_PROCESS_ID=i, **env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        deadline = time.time() + 600
        while not (wd / "checkpoints" / "2").is_dir():
            assert time.time() < deadline and procs[0].poll() is None, "no checkpoint appeared"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        t_kill = time.time()
        out, _ = procs[0].communicate(timeout=180)  # a hang fails here
        waited = time.time() - t_kill
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    # ours (a collective failed) or JAX's (the coordination service saw the heartbeat stop)
    assert "another process of this run failed" in out or "another task died" in out, out[-3000:]
    assert waited < 120
    # the same command on both processes resumes from the last complete checkpoint and finishes
    r = _launch(["train", wd, tiny_tokenizer_dir, 2, 4, 1, 60])
    assert r.returncode == 0, r.stderr[-5000:]
    assert "resuming" in r.stdout
    assert json.loads((wd / "summary.json").read_text())["steps"] == 60


def _free_port():
    sys.path.insert(0, str(LAUNCHER.parent))
    from local import free_port
    return free_port()



@pytest.mark.slow  # ~23 s; 2-process training stays in the fast suite (15 min budget)
def test_two_processes_write_one_evaluation_set(tmp_path, run_worker):
    """Each process samples its share of the batches; the assembled file equals a one-process run."""
    model = tmp_path / "model"
    run_worker(["tiny-model", model], devices=1)
    run_worker(["sample-npz", model, tmp_path / "one.npz"], devices=1)
    r = _launch(["sample-npz", model, tmp_path / "two.npz"], processes=2, devices=2)
    assert r.returncode == 0, r.stderr[-5000:]
    one, two = np.load(tmp_path / "one.npz")["arr_0"], np.load(tmp_path / "two.npz")["arr_0"]
    assert one.shape[0] == 15 and not (tmp_path / "two.npz.parts").exists()
    assert np.abs(one.astype(int) - two).max() <= 1


@pytest.mark.slow  # ~1 min: two FID evaluations of the fixture's batches
def test_two_processes_share_one_fid_evaluation(tmp_path, run_worker, fid_inception_file, monkeypatch):
    """Both processes compute features of their share of the batches (sample and reference); process 0
    scores: the report equals a one-process run's and the ADM evaluator's numbers."""
    from conftest import fid_fixture_dir
    d = fid_fixture_dir()
    args = [d / "e2e_sample.npz", d / "e2e_ref.npz", fid_inception_file]
    monkeypatch.setenv("ARJAX_CACHE", str(tmp_path / "cache1"))
    run_worker(["eval-fid-npz", *args, tmp_path / "one"], devices=1)
    monkeypatch.setenv("ARJAX_CACHE", str(tmp_path / "cache2"))
    r = _launch(["eval-fid-npz", *args, tmp_path / "two"], processes=2, devices=2)
    assert r.returncode == 0, r.stderr[-5000:]
    one, two = (json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two"))
    assert two["versions"]["processes"] == 2 and two["versions"]["devices"] == 4
    want = json.loads((d / "expected.json").read_text())["e2e"]
    for k in ("inception_score", "precision", "recall"):
        assert abs(two[k] - one[k]) <= 1e-6 * abs(one[k]), (k, one[k], two[k])
        assert abs(two[k] - want[k]) <= (1e-4 * want[k] if k == "inception_score" else 2e-3), (k, two[k], want[k])
