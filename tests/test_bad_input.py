"""Bad input fails early with an error that names what is wrong (not an XLA traceback).

Uses the var_tiny fixture (tests skip when it is absent). Modified state dicts are written to tmp_path.
"""
import builtins
import contextlib
import shutil
import sys

import numpy as np
import pytest

import arjax
from arjax.convert.state_dict import load_state_dict
from arjax.convert.var import convert_var

L, V, NUM_CLASSES = 680, 4096, 1000  # var_tiny: 10 scales up to 16x16, vocab 4096, 1000 classes


@contextlib.contextmanager
def _raises(exc, *words):
    """pytest.raises that also requires every word (case-insensitive) in the message."""
    with pytest.raises(exc) as info:
        yield info
    msg = str(info.value).lower()
    missing = [w for w in words if w.lower() not in msg]
    assert not missing, f"message lacks {missing}: {info.value}"


# -- images ---------------------------------------------------------------------------------------
GOOD = np.zeros((1, 256, 256, 3), np.float32)


def _nan_image():
    x = GOOD.copy()
    x[0, 5, 7, 1] = np.nan
    return x


@pytest.mark.parametrize("images, words", [
    (np.zeros((256, 256, 3), np.float32), ("rank 3", "(B, H, W, 3)")),
    (np.zeros((2, 1, 256, 256, 3), np.float32), ("rank 5",)),
    (np.zeros((1, 3, 256, 256), np.float32), ("NCHW", "NHWC")),
    (np.zeros((1, 256, 256, 4), np.float32), ("3 channels", "(1, 256, 256, 4)")),
    (np.zeros((1, 128, 128, 3), np.float32), ("256x256", "128x128")),
    (np.zeros((1, 256, 128, 3), np.float32), ("256x256", "256x128")),
    (np.full((1, 256, 256, 3), 2.0, np.float32), ("[-1, 1]", "2")),
    (np.full((1, 256, 256, 3), 0.5, np.float32) * np.r_[1, 1, -3].astype(np.float32), ("[-1, 1]", "-1.5")),
    (np.zeros((1, 256, 256, 3), np.uint8), ("float", "uint8", "127.5")),
    (np.zeros((1, 256, 256, 3), np.int32), ("float", "int32")),
    (_nan_image(), ("non-finite", "nan")),
], ids=["rank3", "rank5", "nchw", "4ch", "size", "non_square", "above1", "below-1", "uint8", "int32", "nan"])
def test_bad_images(var_tiny_pipe, images, words):
    with _raises(ValueError, *words):
        var_tiny_pipe.tokenizer.encode(images)


def test_images_inf(var_tiny_pipe):
    x = GOOD.copy()
    x[0, 0, 0, 0] = np.inf
    with _raises(ValueError, "1 non-finite", "inf"):
        var_tiny_pipe.tokenizer.encode(x)


# -- tokens ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("idx, words", [
    (np.zeros((1, L - 1), np.int32), (f"(B, {L})", f"(1, {L - 1})")),
    (np.zeros((1, L + 1), np.int32), (f"(B, {L})", f"(1, {L + 1})")),
    (np.zeros((L,), np.int32), (f"(B, {L})", f"({L},)")),
    (np.full((2, L), V, np.int64), (f"[0, {V - 1}]", str(V))),
    (np.full((2, L), -1, np.int64), (f"[0, {V - 1}]", "-1")),
    (np.zeros((2, L), np.float32), ("integers", "float32")),
], ids=["short", "long", "1d", "vocab", "negative", "float"])
@pytest.mark.parametrize("entry", ["decode", "var_input", "logits"])
def test_bad_tokens(var_tiny_pipe, idx, words, entry):
    fn = {"decode": var_tiny_pipe.tokenizer.decode, "var_input": var_tiny_pipe.tokenizer.var_input,
          "logits": lambda t: var_tiny_pipe.logits(t, np.zeros(len(t), np.int32))}[entry]
    with _raises(ValueError, *words):
        fn(idx)


# -- labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, words", [
    ([NUM_CLASSES + 1, 3], (f"[0, {NUM_CLASSES}]", "unconditional", str(NUM_CLASSES + 1))),
    ([-1, 3], (f"[0, {NUM_CLASSES}]", "-1")),
    ([1.0, 3.0], ("integer", "float64")),
    ([[1, 3]], ("1-d", "(1, 2)")),
], ids=["too_big", "negative", "float", "2d"])
def test_bad_labels(var_tiny_pipe, var_cases, labels, words):
    with _raises(ValueError, *words):
        var_tiny_pipe.logits(var_cases["gt_idx"], labels)
    with _raises(ValueError, *words):
        var_tiny_pipe.sample(labels)


def test_label_count_mismatch(var_tiny_pipe, var_cases):
    tokens = var_cases["gt_idx"]  # 2 sequences
    with _raises(ValueError, "3 labels", "2 token sequences"):
        var_tiny_pipe.logits(tokens, [1, 2, 3])
    with _raises(ValueError, "1 labels", "2 token sequences"):
        var_tiny_pipe.logits(tokens, [1])


@pytest.mark.parametrize("kw, words", [
    ({"top_k": -1}, ("top_k", ">= 0", "-1")),
    ({"top_p": 1.5}, ("top_p", "[0, 1]", "1.5")),
    ({"top_p": -0.1}, ("top_p", "[0, 1]", "-0.1")),
], ids=["top_k_neg", "top_p_big", "top_p_neg"])
def test_bad_sampling_args(var_tiny_pipe, kw, words):
    with _raises(ValueError, *words):
        var_tiny_pipe.sample([1, 2], **kw)


# -- model directories ----------------------------------------------------------------------------
def test_load_dir_without_meta(tmp_path):
    (tmp_path / "params").mkdir()
    with _raises(FileNotFoundError, "arjax.json", "missing", str(tmp_path)):
        arjax.load(tmp_path)


def test_load_missing_dir(tmp_path):
    with _raises(FileNotFoundError, "arjax.json", "not an arjax model directory"):
        arjax.load(tmp_path / "nope")


def test_load_dir_without_params(var_tiny_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(var_tiny_dir, d)
    shutil.rmtree(d / "params")
    with _raises(FileNotFoundError, "params", "missing", "incomplete"):
        arjax.load(d)


def test_load_unknown_family(var_tiny_dir, tmp_path):
    import json
    d = tmp_path / "model"
    shutil.copytree(var_tiny_dir, d)
    meta = json.loads((d / "arjax.json").read_text())
    (d / "arjax.json").write_text(json.dumps({**meta, "family": "dalle"}))
    with _raises(ValueError, "family", "'dalle'", "var"):
        arjax.load(d)


# -- conversion -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sds(var_tiny_files):
    from safetensors.numpy import load_file
    return {"vae": load_file(str(var_tiny_files / "vae.safetensors")),
            "var": load_file(str(var_tiny_files / "var.safetensors"))}


def _convert(tmp_path, sds, files, *, vae=None, var=None):
    """Convert with the given state dicts (None: the fixture file) written to tmp_path."""
    from safetensors.numpy import save_file
    paths = {}
    for name, sd in (("vae", vae), ("var", var)):
        if sd is None:
            paths[name] = files / f"{name}.safetensors"
        else:
            paths[name] = tmp_path / f"{name}_mod.safetensors"
            save_file(sd, str(paths[name]))
    return convert_var(paths["vae"], paths["var"], tmp_path / "out")


def test_convert_swapped_files(var_tiny_files, tmp_path):
    with _raises(ValueError, "swapped", "--vae"):
        convert_var(var_tiny_files / "var.safetensors", var_tiny_files / "vae.safetensors", tmp_path / "out")
    assert not (tmp_path / "out" / "arjax.json").exists()


def test_convert_truncated_safetensors(var_tiny_files, tmp_path):
    data = (var_tiny_files / "var.safetensors").read_bytes()
    bad = tmp_path / "var.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with _raises(ValueError, str(bad), "not a readable .safetensors", "truncated"):
        convert_var(var_tiny_files / "vae.safetensors", bad, tmp_path / "out")
    bad.write_bytes(b"")
    with _raises(ValueError, "not a readable .safetensors"):
        load_state_dict(bad)


def test_convert_missing_file(var_tiny_files, tmp_path):
    with _raises(FileNotFoundError, "not found", "nope.safetensors"):
        convert_var(var_tiny_files / "vae.safetensors", tmp_path / "nope.safetensors", tmp_path / "out")


@pytest.mark.parametrize("which, key, shape, expected", [
    ("var", "blocks.1.ffn.fc1.weight", (512, 96), (512, 128)),           # linear: torch (out, in)
    ("var", "head.bias", (4095,), (4096,)),
    ("var", "blocks.1.attn.scale_mul_1H11", (1, 3, 1, 1), (1, 2, 1, 1)),
    ("vae", "decoder.conv_out.weight", (3, 32, 1, 1), (3, 32, 3, 3)),    # conv: torch (O, I, kh, kw)
    ("vae", "encoder.down.1.block.1.norm2.bias", (64,), (32,)),
], ids=["linear", "bias", "scale_mul", "conv", "groupnorm"])
def test_convert_wrong_shape(var_tiny_files, sds, tmp_path, which, key, shape, expected):
    sd = dict(sds[which])
    sd[key] = np.zeros(shape, sd[key].dtype)
    with _raises(ValueError, "does not match", repr(key), f"expected shape {expected}", f"found {shape}"):
        _convert(tmp_path, sds, var_tiny_files, **{which: sd})
    assert not (tmp_path / "out" / "arjax.json").exists()


@pytest.mark.parametrize("which, key, expected", [
    ("var", "blocks.1.attn.q_bias", (128,)),
    ("var", "blocks.0.ada_lin.1.weight", (768, 128)),
    ("vae", "quantize.quant_resi.qresi_ls.2.weight", (32, 32, 3, 3)),
    ("vae", "decoder.up.4.attn.2.qkv.weight", (384, 128, 1, 1)),
], ids=["q_bias", "ada_lin", "phi", "attn"])
def test_convert_missing_tensor(var_tiny_files, sds, tmp_path, which, key, expected):
    sd = {k: v for k, v in sds[which].items() if k != key}
    with _raises(ValueError, "missing tensor", repr(key), str(expected)):
        _convert(tmp_path, sds, var_tiny_files, **{which: sd})


@pytest.mark.parametrize("which", ["var", "vae"])
def test_convert_unexpected_tensor(var_tiny_files, sds, tmp_path, which):
    sd = {**sds[which], "extra_head.weight": np.ones((7, 3), np.float32)}
    with _raises(ValueError, "unexpected tensor", "'extra_head.weight'", "(7, 3)"):
        _convert(tmp_path, sds, var_tiny_files, **{which: sd})


def test_convert_many_problems_are_listed(var_tiny_files, sds, tmp_path):
    sd = {k: v for k, v in sds["var"].items() if not k.startswith("blocks.1.")}
    sd["blocks.1.attn.q_bias"] = sds["var"]["blocks.1.attn.q_bias"]  # keep depth 2
    with _raises(ValueError, "missing tensor", "blocks.1.ffn.fc2.bias", "blocks.1.attn.proj.weight"):
        _convert(tmp_path, sds, var_tiny_files, var=sd)


@pytest.mark.parametrize("shape, words", [
    ((2048, 32), ("vocab 2048 x dim 32", "4096 x 32")),
    ((4096, 16), ("vocab 4096 x dim 16", "4096 x 32")),
], ids=["vocab", "dim"])
def test_convert_tokenizer_mismatch(var_tiny_files, sds, tmp_path, shape, words):
    vae = {**sds["vae"], "quantize.embedding.weight": np.zeros(shape, np.float32)}
    with _raises(ValueError, "tokenizer", "transformer", *words):
        _convert(tmp_path, sds, var_tiny_files, vae=vae)


def test_convert_existing_output(var_tiny_files, tmp_path):
    (tmp_path / "out" / "params").mkdir(parents=True)
    with _raises(FileExistsError, "already exists", "empty output directory"):
        convert_var(var_tiny_files / "vae.safetensors", var_tiny_files / "var.safetensors", tmp_path / "out")


# -- .pth without torch -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["sys_modules", "import_hook"])
def test_pth_without_torch(tmp_path, monkeypatch, how):
    pth = tmp_path / "var_d16.pth"
    pth.write_bytes(b"not really a checkpoint")
    if how == "sys_modules":
        monkeypatch.setitem(sys.modules, "torch", None)
    else:
        real_import = builtins.__import__

        def no_torch(name, *args, **kwargs):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_torch)
    with _raises(ImportError, "var_d16.pth", "pip install torch", ".safetensors"):
        load_state_dict(pth)
    with _raises(ImportError, "pip install torch", ".safetensors"):
        convert_var(pth, pth, tmp_path / "out")


def test_pth_corrupt(tmp_path):
    pytest.importorskip("torch", reason="reading .pth checkpoints needs torch")
    pth = tmp_path / "vae.pth"
    pth.write_bytes(b"\x80\x02garbage" * 10)
    with _raises(ValueError, str(pth), "not a readable PyTorch checkpoint"):
        load_state_dict(pth)


def test_pth_not_a_state_dict(tmp_path):
    torch = pytest.importorskip("torch", reason="reading .pth checkpoints needs torch")
    pth = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), pth)
    with _raises(ValueError, "does not hold a state dict", "Tensor"):
        load_state_dict(pth)
