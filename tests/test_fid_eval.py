"""`arjax eval fid | recon | ref` end to end, with the fixture's random-weight Inception.

The command's numbers are checked against the ADM evaluator's own (the fixture's end-to-end batches)
and against the same metrics computed in memory through the Python API (streaming, parts, caching and
resuming must change nothing); a SIGKILLed run resumes to the same report.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, fid_fixture_dir

from arjax import cli

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARJAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def net(fid_inception_file):
    from arjax.eval.fid.inception import Inception
    return Inception.from_file(fid_inception_file, resize="tf1", batch_size=12)  # the commands' below too


@pytest.fixture(scope="module")
def quickstart_sized_model(tmp_path_factory) -> Path:
    """A randomly initialised VAR of the quickstart's sizes (tokenizer and transformer), 32 px, 10 classes."""
    import arjax
    from arjax.config import load_config
    from arjax.data.synthetic import CLASS_NAMES
    tok = load_config(str(REPO / "configs" / "quickstart.py") + ":tokenizer").tokenizer.to_dict()
    model = load_config(str(REPO / "configs" / "quickstart.py") + ":var").model.to_dict()
    model.update(vocab_size=tok["vocab_size"], cvae=tok["z_channels"], patch_nums=tok["patch_nums"])
    pipe = arjax.build({"family": "var", "tokenizer": tok, "model": model, "class_names": CLASS_NAMES})
    return arjax.save(pipe, tmp_path_factory.mktemp("qs") / "model")


@pytest.fixture(scope="module")
def builtin_ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    assert cli.main(["eval", "ref", "--source", "builtin:24", "--size", "32", "--out", str(out)]) == 0
    return out


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_npz_batches_reproduce_the_adm_evaluator(tmp_path, fid_inception_file):
    d = fid_fixture_dir()
    want = json.loads((d / "expected.json").read_text())["e2e"]
    run = tmp_path / "run"
    assert cli.main(["eval", "fid", "--npz", str(d / "e2e_sample.npz"), "--ref", str(d / "e2e_ref.npz"),
                     "--inception", str(fid_inception_file), "--resize", "pytorch-fid",
                     "--split-size", str(want["split_size"]), "--pr-batch", str(want["pr_batch"]),
                     "--batch-size", "12", "--inception-batch", "12", "--out", str(run)]) == 0
    got = _report(run)
    print(f"[parity] e2e IS {got['inception_score']:.6f} vs {want['inception_score']:.6f}, precision "
          f"{got['precision']:.4f} vs {want['precision']:.4f}, recall {got['recall']:.4f} vs {want['recall']:.4f}")
    assert abs(got["inception_score"] / want["inception_score"] - 1) <= 1e-4
    assert abs(got["precision"] - want["precision"]) <= 2e-3
    assert abs(got["recall"] - want["recall"]) <= 2e-3
    assert got["settings"]["resize"] == "pytorch-fid"
    from PIL import Image
    grid = np.asarray(Image.open(run / "grid.png").convert("RGB"))
    first = np.load(d / "e2e_sample.npz")["arr_0"][0]  # 64 px tiles, drawn 1:1 after a 2 px border
    np.testing.assert_array_equal(grid[2:66, 2:66], first)
    assert {"jax", "arjax", "scipy"} <= set(got["versions"]) and got["seconds"]["total"] > 0


def _in_memory_metrics(net, sample_images, ref_images, split_size, pr_batch):
    """The metrics through the Python API on images held in memory. sFID is left out: its plumbing is
    FID's on other features (and each 2048-d matrix root costs ~10 s here); its statistics are compared."""
    from arjax.eval import fid
    s, r = net(sample_images), net(ref_images)
    precision, recall = fid.precision_recall(r["pool3"], s["pool3"], k=3, batch_size=pr_batch)
    return {"fid": fid.frechet_distance(fid.statistics(s["pool3"]), fid.statistics(r["pool3"])),
            "inception_score": fid.inception_score(s["pool3"], net.softmax_w, split_size=split_size),
            "precision": precision, "recall": recall, "spatial_stats": fid.statistics(s["spatial"])}


def _spatial_stats_of_run(run: Path):
    from arjax.eval.fid import RunningStatistics
    from arjax.parts import load_part
    stats = RunningStatistics()
    for f in sorted((run / "parts").glob("*[0-9].npz")):
        stats.update(load_part(f)["spatial"])
    return stats.result()


def _assert_same_metrics(got: dict, want: dict, run: Path, fid_key: str = "fid"):
    for k in (fid_key, "inception_score", "precision", "recall"):
        print(f"[check] {k}: command {got[k]!r}, in memory {want['fid' if k == fid_key else k]!r}")
        np.testing.assert_allclose(got[k], want["fid" if k == fid_key else k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(_spatial_stats_of_run(run), want["spatial_stats"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert np.isfinite(got["sfid"]) and got["sfid"] > 0


def _fid_args(model, ref, weights, run, *extra):
    return ["eval", "fid", "--checkpoint", str(model), "--ref", str(ref), "--inception", str(weights),
            "--num", "20", "--batch-size", "10", "--top-k", "20", "--seed", "3", "--split-size", "10",
            "--pr-batch", "16", "--inception-batch", "12", "--out", str(run), *extra]


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory, quickstart_sized_model, builtin_ref, fid_inception_file):
    run = tmp_path_factory.mktemp("fid_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARJAX_CACHE", str(run.parent / "cache"))
        assert cli.main(_fid_args(quickstart_sized_model, builtin_ref, fid_inception_file, run)) == 0
    return run


@pytest.mark.slow  # ~80 s with its fixture (sampling, two 2048-d matrix roots); the 15 min budget
def test_checkpoint_run_equals_the_metrics_computed_in_memory(checkpoint_run, quickstart_sized_model, builtin_ref,
                                                              net):
    import arjax
    from arjax.eval.fid.batches import open_batch
    from arjax.eval.fid.evaluate import balanced_labels
    from arjax.sample.bulk import to_pixels
    got = _report(checkpoint_run)
    labels = balanced_labels(20, 10)
    assert list(np.bincount(labels)) == [2] * 10
    images = to_pixels(arjax.load(quickstart_sized_model).sample(labels, top_k=20, seed=3, batch_size=10))
    ref = open_batch(builtin_ref)
    want = _in_memory_metrics(net, images, ref.read(0, ref.num), split_size=10, pr_batch=16)
    _assert_same_metrics(got, want, checkpoint_run)
    assert got["settings"]["num"] == 20 and got["settings"]["cfg"] == 1.5
    assert (checkpoint_run / "grid.png").is_file()


@pytest.mark.slow  # ~80 s: two fresh processes (the suite's 15 min budget); .ci/run runs the slow set too
def test_killed_run_resumes_to_the_same_report(tmp_path, checkpoint_run, quickstart_sized_model, builtin_ref,
                                               fid_inception_file):
    run = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", ARJAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "arjax.cli", *_fid_args(quickstart_sized_model, builtin_ref, fid_inception_file, run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not list((run / "parts").glob("*[0-9].npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run / "parts").glob("*[0-9].npz"))
    assert len(done) == 1 and not (run / "report.json").exists(), done  # killed mid-run
    stamps = {p: (run / "parts" / p).stat().st_mtime_ns for p in done}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert all((run / "parts" / p).stat().st_mtime_ns == t for p, t in stamps.items())  # kept, not redone
    got, want = _report(run), _report(checkpoint_run)
    for k in METRICS:
        assert got[k] == want[k], (k, got[k], want[k])


def test_a_resumed_run_with_other_settings_is_refused(tmp_path):
    from arjax.eval.fid.evaluate import _run_dir
    settings = {"mode": "checkpoint", "num": 20, "cfg": 1.5, "sample_options": {"steps": [1, 2]}}
    _run_dir(tmp_path / "run", settings)
    assert _run_dir(tmp_path / "run", dict(settings)) == tmp_path / "run"  # the same settings resume
    with pytest.raises(ValueError, match=r"cfg: 1.5 -> 2.0"):
        _run_dir(tmp_path / "run", {**settings, "cfg": 2.0})


def test_reference_statistics_are_stored_and_take_precedence(tmp_path, builtin_ref, fid_inception_file, net):
    from arjax.eval import fid
    from arjax.eval.fid.batches import open_batch
    out = tmp_path / "ref_stats.npz"
    assert cli.main(["eval", "ref", "--source", "builtin:24", "--size", "32", "--out", str(out),
                     "--inception", str(fid_inception_file), "--inception-batch", "12"]) == 0
    batch = open_batch(out)
    np.testing.assert_array_equal(batch.read(0, 24), open_batch(builtin_ref).read(0, 24))
    feats = net(batch.read(0, 24))
    stats = batch.statistics()
    for name, key in (("pool3", "pool3"), ("spatial", "spatial")):
        mu, sigma = fid.statistics(feats[key])
        np.testing.assert_allclose(stats[name][0], mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[name][1], sigma, rtol=1e-5, atol=1e-6)
    # as in ADM, statistics stored in the reference are used instead of those of its images
    from arjax.eval.fid.batches import write_batch
    from arjax.eval.fid.evaluate import reference_features
    shifted = tmp_path / "shifted.npz"
    mu, sigma = stats["pool3"]
    write_batch(shifted, 24, (32, 32, 3), [batch.read(0, 24)], extra={"mu": mu + 1.0, "sigma": sigma})
    ref = reference_features(open_batch(shifted), net, progress=False)
    np.testing.assert_array_equal(ref["pool3_stats"][0], mu + 1.0)
    assert ref["precomputed_statistics"] == ["pool3"]
    np.testing.assert_allclose(ref["pool3"], feats["pool3"], rtol=1e-6)  # precision/recall: the images' own
    np.testing.assert_allclose(ref["spatial_stats"][0], stats["spatial"][0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~60 s: a tokenizer compile and three 2048-d matrix roots (15 min budget)
def test_tokenizer_reconstructions(tmp_path, quickstart_sized_model, builtin_ref, fid_inception_file, net):
    import arjax
    from arjax.eval.fid.batches import open_batch
    from arjax.eval.image_quality import psnr, ssim
    from arjax.sample.bulk import to_pixels
    run = tmp_path / "recon"
    assert cli.main(["eval", "recon", "--checkpoint", str(quickstart_sized_model), "--ref", str(builtin_ref),
                     "--inception", str(fid_inception_file), "--batch-size", "12", "--split-size", "12",
                     "--pr-batch", "16", "--inception-batch", "12", "--out", str(run)]) == 0
    got = _report(run)
    real = open_batch(builtin_ref).read(0, 24)
    tok = arjax.load_tokenizer(quickstart_sized_model)
    rec = np.concatenate([to_pixels((np.asarray(tok.decode(tok.encode(real[s:s + 12] / np.float32(127.5) - 1))) + 1)
                                    / 2) for s in (0, 12)])
    want = _in_memory_metrics(net, rec, real, split_size=12, pr_batch=16)
    _assert_same_metrics(got, want, run, fid_key="rfid")
    np.testing.assert_allclose(got["psnr"], psnr(rec, real).mean(), rtol=1e-5)
    np.testing.assert_allclose(got["ssim"], ssim(rec, real).mean(), rtol=1e-5)
    assert (run / "grid.png").is_file()


def test_bad_input_is_named(tmp_path, builtin_ref, fid_inception_file, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 8, 8, 3), np.uint8))
    base = ["eval", "fid", "--ref", str(builtin_ref), "--inception", str(fid_inception_file)]
    assert cli.main([*base, "--npz", str(bad), "--out", str(tmp_path / "r1")]) == 2
    assert "arr_0" in capsys.readouterr().err
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.numpy import save_file
    save_file({"conv.weight": np.zeros((3, 3, 1, 1), np.float32)}, str(wrong))
    assert cli.main(["eval", "fid", "--npz", str(builtin_ref), "--ref", str(builtin_ref), "--inception", str(wrong),
                     "--out", str(tmp_path / "r2")]) == 2
    assert "Conv2d_1a_3x3" in capsys.readouterr().err
    assert cli.main([*base, "--npz", str(builtin_ref), "--split-size", "100", "--out", str(tmp_path / "r3")]) == 2
    assert "split" in capsys.readouterr().err
    from arjax.eval.fid.batches import open_batch, write_batch
    other = tmp_path / "other_stats.npz"  # e.g. statistics made with another network's 1024-d features
    write_batch(other, 24, (32, 32, 3), [open_batch(builtin_ref).read(0, 24)],
                extra={"mu": np.zeros(1024), "sigma": np.eye(1024)})
    assert cli.main(["eval", "fid", "--npz", str(builtin_ref), "--ref", str(other), "--inception",
                     str(fid_inception_file), "--split-size", "8", "--out", str(tmp_path / "r4")]) == 2
    assert "1024 dimensions" in capsys.readouterr().err and not (tmp_path / "r4" / "parts").exists()


def test_builtin_evaluation_keeps_its_old_command_line(tmp_path, capsys):
    assert cli.build_parser().parse_args(["eval", "classes", "--checkpoint", "x"]).fn is cli.cmd_eval
    # `arjax eval --checkpoint DIR` (the README's form before `eval fid`) still reaches that command
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_ssim_and_psnr_match_scikit_image():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (pip install -e '.[dev]') is the reference")
    from arjax.eval.image_quality import psnr, ssim
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 33, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    b[1] = a[1] // 2 + 60  # a contrast/brightness change, not only noise
    for i in range(3):
        np.testing.assert_allclose(ssim(a, b)[i], skm.structural_similarity(a[i], b[i], channel_axis=-1,
                                                                             data_range=255), rtol=1e-5)
        np.testing.assert_allclose(psnr(a, b)[i], skm.peak_signal_noise_ratio(a[i], b[i], data_range=255), rtol=1e-5)
    assert ssim(a, a).min() == pytest.approx(1.0) and np.isinf(psnr(a, a)).all()
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, b[:, :20])


def test_grid_rows_are_one_class_each():
    from arjax.eval.fid.evaluate import balanced_labels, grid_indices
    for num, k in ((20, 10), (50_000, 1000), (23, 3)):
        labels = balanced_labels(num, k)
        assert np.bincount(labels).max() - np.bincount(labels).min() <= 1  # class-balanced
        shown, per_row = grid_indices(labels, k)
        rows = labels[shown].reshape(-1, per_row)
        assert (rows == rows[:, :1]).all() and len(np.unique(rows[:, 0])) == len(rows) <= 8


def test_a_full_model_directory_gives_its_tokenizer(tmp_path):
    """`arjax eval recon --checkpoint` takes a tokenizer's or a full model's directory."""
    import arjax
    from conftest import tiny_builtin_var
    pipe = tiny_builtin_var()
    model = arjax.save(pipe, tmp_path / "m")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(arjax.load_tokenizer(model).encode(x), pipe.tokenizer.encode(x))
