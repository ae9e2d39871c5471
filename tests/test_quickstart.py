"""The README's main job, end to end with 3-step stages: both trainings, the grid, the evaluation,
and rerun stages that reuse the finished ones instead of training again."""
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from arjax import cli
from arjax.eval.classifier import classifier_path

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.py")


@pytest.mark.slow  # ~90 s; measured 24 min for the default suite on this session's machine (15 min budget)
def test_quickstart_glue(tmp_path, capsys, builtin_classifier_dir):
    # the evaluation classifier is the session's (the quickstart would train its own, the same way)
    shutil.copytree(builtin_classifier_dir, classifier_path(32, tmp_path / "classifier"))
    args = ["quickstart", "--out", str(tmp_path), "--config", CONFIG, "--set-tokenizer", "steps=3",
            "--set-var", "steps=3", "--set-var", "data.kwargs.num_examples=64", "--eval-per-class", "2"]
    assert cli.main(args) == 0
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size[1] > 10 * 96  # ten labelled rows of enlarged 32 px samples
    report = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= report["class_accuracy"] <= 100 and report["frechet_distance"] > 0
    for stage in ("tokenizer", "var"):
        assert json.loads((tmp_path / stage / "summary.json").read_text())["steps"] == 3
    # a rerun reuses both finished stages (the stage runner the quickstart calls; sampling is not redone here)
    capsys.readouterr()
    for stage in ("tokenizer", "var"):
        summary = cli._train_stage(f"{CONFIG}:{stage}", tmp_path / stage, ["steps=3"])
        assert summary["finished"] and summary["steps"] == 3
    assert capsys.readouterr().out.count("already trained, reusing") == 2
