"""The README's user path: convert a checkpoint with the CLI, then sample a labelled PNG grid."""
import json

import numpy as np
import pytest
from PIL import Image

import arjax
from arjax import cli


def test_convert_then_sample_grid(var_tiny_files, tmp_path, capsys):
    out = tmp_path / "var_tiny"
    rc = cli.main(["convert", "var", "--vae", str(var_tiny_files / "vae.safetensors"),
                   "--var", str(var_tiny_files / "var.safetensors"), "--out", str(out)])
    assert rc == 0
    meta = json.loads((out / "arjax.json").read_text())
    assert meta["model"]["depth"] == 2 and meta["tokenizer"]["ch"] == 32
    png = tmp_path / "grid.png"
    rc = cli.main(["sample", "--checkpoint", str(out), "--classes", "3,981", "--per-class", "2",
                   "--top-k", "1", "--top-p", "0", "--batch-size", "4", "--out", str(png)])
    assert rc == 0
    grid = np.asarray(Image.open(png))
    # 2 rows of 256px tiles plus padding, 2 tiles per row plus the label column
    assert grid.shape[0] == 2 * 258 + 2 and grid.shape[1] > 2 * 256
    assert "sampling" in capsys.readouterr().err  # tqdm progress goes to stderr


@pytest.mark.slow  # ~20 s alone; CLI samples = pipeline samples also in test_evaluation_npz_... (15 min budget)
def test_grid_tiles_match_pipeline_samples(tmp_path):
    """Chunked CLI sampling keys samples by absolute index: tiles equal one whole-batch sample."""
    import dataclasses

    import arjax
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    tok = VQVAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=(1, 2, 4),
                      using_sa=False)
    var = VARConfig(depth=1, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=(1, 2, 4), num_classes=4,
                    init_head=1.0)
    pipe = arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(var)})
    png = cli.sample_grid(pipe, [1, 3], 2, tmp_path / "g.png", cfg=1.5, top_k=50, top_p=0.9, seed=7, batch_size=2)
    grid = np.asarray(Image.open(png)).astype(np.int16)
    ref = np.asarray(pipe.sample([1, 1, 3, 3], cfg=1.5, top_k=50, top_p=0.9, seed=7))
    ref = (np.clip(ref, 0, 1) * 255 + 0.5).astype(np.int16)
    k = 96 // 16  # 16 px tiles are shown enlarged
    ref = np.repeat(np.repeat(ref, k, axis=1), k, axis=2)
    s = ref.shape[1]
    for i in range(4):
        r, c = divmod(i, 2)
        y, x = 2 + r * (s + 2), 140 + 2 + c * (s + 2)
        assert np.abs(grid[y:y + s, x:x + s] - ref[i]).max() <= 1
    assert np.abs(ref[0] - ref[1]).max() > 0  # two samples of one class differ


def test_evaluation_npz_is_class_major_resumable_and_equals_pipeline_samples(tmp_path, capsys):
    import dataclasses

    import arjax
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    tok = VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=(1, 2, 4),
                      using_sa=False)
    var = VARConfig(depth=1, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=(1, 2, 4), num_classes=3,
                    init_head=1.0)
    model = arjax.save(arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok),
                                    "model": dataclasses.asdict(var)}), tmp_path / "m")
    out = tmp_path / "eval.npz"
    args = ["sample", "--checkpoint", str(model), "--classes", "all", "--per-class", "3", "--batch-size", "4",
            "--top-k", "20", "--seed", "5", "--npz", str(out)]
    # an interrupted earlier run left the first batch's part: it is reused, not resampled
    parts = tmp_path / "eval.npz.parts"
    parts.mkdir()
    size = tok.image_size
    marker = np.full((4, size, size, 3), 7, np.uint8)
    np.savez(parts / f"{0:09d}.npz", images=marker)
    assert cli.main(args) == 0
    arr = np.load(out)["arr_0"]
    assert arr.shape == (9, size, size, 3) and arr.dtype == np.uint8 and not parts.exists()
    np.testing.assert_array_equal(arr[:4], marker)
    want = arjax.load(model).sample(np.repeat(np.arange(3), 3), top_k=20, seed=5)
    want = np.clip(np.round(np.asarray(want) * 255), 0, 255).astype(np.uint8)
    assert np.abs(arr[4:].astype(int) - want[4:]).max() <= 1
    assert cli.main(["sample", "--checkpoint", str(model), "--classes", "all", "--out", str(tmp_path / "g.png")]) == 2


def test_init_with_override_and_unknown_key(tmp_path, capsys):
    cfg = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "var.py") + ":tiny"
    assert cli.main(["init", "--config", cfg, "--set", "model.depth=1", "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "arjax.json").read_text())["model"]["depth"] == 1
    assert cli.main(["init", "--config", cfg, "--set", "model.dpth=1", "--out", str(tmp_path / "n")]) == 2
    assert "model.dpth" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s: compiles the bf16 sampler
def test_init_takes_a_training_config_too(tmp_path, capsys):
    """One schema: a training recipe initialises the model it would train (on the tokenizer layout it plans
    with), here the ImageNet d16 recipe at its tiny size; a tokenizer-training config is refused by name."""
    configs = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
    out = tmp_path / "d16"
    assert cli.main(["init", "--config", f"{configs / 'imagenet.py'}:d16:tiny", "--out", str(out)]) == 0
    meta = json.loads((out / "arjax.json").read_text())
    assert meta["family"] == "var" and meta["model"]["depth"] == 2 and meta["model"]["dtype"] == "bfloat16"
    assert meta["model"]["patch_nums"] == meta["tokenizer"]["patch_nums"] == [1, 2, 3, 4]
    pipe = arjax.load(out)
    assert np.asarray(pipe.sample([0], top_k=0, top_p=0.0)).shape == (1, 16, 16, 3)
    assert cli.main(["init", "--config", f"{configs / 'quickstart.py'}:tokenizer", "--out", str(tmp_path / "t")]) == 2
    assert "config key task names the member" in capsys.readouterr().err


def test_convert_error_is_one_clear_line(tmp_path, capsys):
    rc = cli.main(["convert", "var", "--vae", str(tmp_path / "nope.pth"), "--var", str(tmp_path / "no.pth"),
                   "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "not found" in capsys.readouterr().err
