"""FID Inception-v3: parity with pytorch-fid (random weights of the shared fixture), the two input resizes,
batching, loading errors. The network is built once per module (fp32: ~3 s compile on 2 CPU cores)."""
import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES

from arjax.eval.fid.inception import Inception, _network
from arjax.eval.fid.resize import inception_input, resize_bilinear_tf1, resize_bilinear_torch

FID = FIXTURES / "fid"
SIZES = (32, 64, 256, 299)
OUTPUTS = {"pool3": "pool3", "spatial": "spatial", "logits": "logits_nobias"}   # ours -> fixture key prefix

pytestmark = pytest.mark.skipif(not (FID / "inception_cases.npz").is_file(),
                                reason=f"FID fixture {FID} is absent (set ARJAX_FIXTURES to shared/fixtures)")


@pytest.fixture(scope="module")
def cases():
    with np.load(FID / "inception_cases.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def state_dict():
    spec = importlib.util.spec_from_file_location("fid_make_weights", FID / "make_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_weights(0)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The fixture's own script writes the safetensors, so the file path is what users run."""
    out = tmp_path_factory.mktemp("fid") / "inception_random.safetensors"
    subprocess.run([sys.executable, str(FID / "make_weights.py"), "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def net(weights_file):
    return Inception.from_file(weights_file, batch_size=4)


def rel_err(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("size", SIZES)
def test_outputs_match_pytorch_fid(net, cases, size):
    out = net(cases[f"images_{size}"])
    for ours, ref in OUTPUTS.items():
        want = cases[f"{ref}_{size}"]
        assert out[ours].dtype == np.float32 and out[ours].shape == want.shape, (ours, out[ours].shape)
        err = rel_err(out[ours], want)
        print(f"[parity] {size}px {ours}: max err / max |ref| = {err:.2e}")
        assert err <= 1e-4, f"{size}px {ours}: relative error {err:.2e} > 1e-4"


def test_new_input_size_does_not_recompile_the_network(net, cases):
    net(cases["images_64"])
    before = _network._cache_size()
    net(cases["images_32"][:1])
    net(np.zeros((1, 40, 50, 3), np.uint8))     # non-square too
    assert _network._cache_size() == before


def test_api_attributes(net, state_dict):
    assert (net.resize, net.dtype, net.batch_size) == ("pytorch-fid", "float32", 4)
    np.testing.assert_array_equal(net.softmax_w, state_dict["fc.weight"].T)
    assert net.softmax_w.shape == (2048, 1008) and net.softmax_w.dtype == np.float32
    # the same weights from a file or a dict: the same fingerprint; mode and dtype are part of it
    assert Inception.from_state_dict(state_dict, batch_size=4).fingerprint == net.fingerprint
    fps = {net.fingerprint, Inception.from_state_dict(state_dict, resize="tf1").fingerprint,
           Inception.from_state_dict(state_dict, dtype="bfloat16").fingerprint}
    assert len(fps) == 3 and all(isinstance(f, str) and int(f, 16) >= 0 for f in fps)
    empty = net(np.zeros((0, 64, 64, 3), np.uint8))
    assert {k: v.shape for k, v in empty.items()} == {"pool3": (0, 2048), "spatial": (0, 2023), "logits": (0, 1008)}


def test_results_do_not_depend_on_batch_size(net, state_dict, cases):
    """5 images: chunks 4 + 1 (3 padding rows) here, 3 + 2 with batch_size 3; each image alone too."""
    rng = np.random.default_rng(1)
    images = np.concatenate([cases["images_64"], rng.integers(0, 256, (2, 64, 64, 3), np.uint8)])
    a = net(images)
    b = Inception.from_state_dict(state_dict, batch_size=3)(images)
    alone = net(images[4:5])
    for k in OUTPUTS:
        scale = np.abs(a[k]).max()
        assert np.abs(a[k] - b[k]).max() <= 1e-5 * scale, k
        assert np.abs(a[k][4:] - alone[k]).max() <= 1e-5 * scale, k
        assert rel_err(a[k][:3], cases[f"{OUTPUTS[k]}_64"]) <= 1e-4, k


@pytest.mark.parametrize("size", (32, 64, 256))
def test_tf1_resize_matches_tensorflow(cases, size):
    want = cases[f"tf_legacy_resize_{size}"]
    got = np.asarray(resize_bilinear_tf1(cases[f"images_{size}"]))
    err = float(np.abs(got - want).max())
    print(f"[parity] tf1 resize {size}px: max abs err {err:.2e} on [0, 255]")
    assert got.shape == want.shape and err <= 1e-3
    normalised = np.asarray(inception_input(cases[f"images_{size}"], "tf1"))
    assert np.abs(normalised - (want - 128) / 128).max() <= 1e-3 / 128


def torch_bilinear_loop(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """F.interpolate(mode="bilinear", align_corners=False) in float64, pixel by pixel, NHWC."""
    n, h, w, c = x.shape
    y = np.zeros((n, out_h, out_w, c))

    def taps(i, n_in, n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = int(math.floor(src))
        hi = lo + 1 if lo < n_in - 1 else lo
        return lo, hi, src - lo

    for i in range(out_h):
        y0, y1, fy = taps(i, h, out_h)
        for j in range(out_w):
            x0, x1, fx = taps(j, w, out_w)
            top = (1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1]
            bottom = (1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]
            y[:, i, j] = (1 - fy) * top + fy * bottom
    return y


@pytest.mark.parametrize("shape, out", [((2, 13, 21, 3), (299, 299)), ((1, 40, 37, 3), (17, 17))])
def test_pytorch_fid_resize_matches_formula(shape, out):
    images = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    want = torch_bilinear_loop(images / 255.0, *out)
    got = np.asarray(resize_bilinear_torch(images / 255.0, out[0]))
    assert np.abs(got - want).max() <= 1e-5          # float32 source coordinates, as torch computes them
    if out == (299, 299):
        normalised = np.asarray(inception_input(images, "pytorch-fid"))
        assert np.abs(normalised - (2 * want - 1)).max() <= 2e-5


def test_resize_is_identity_at_299():
    images = np.random.default_rng(0).integers(0, 256, (1, 299, 299, 3), np.uint8)
    np.testing.assert_array_equal(np.asarray(resize_bilinear_torch(images)), images.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(resize_bilinear_tf1(images)), images.astype(np.float32))


def test_renamed_or_misshaped_tensor_is_named(state_dict):
    renamed = dict(state_dict)
    renamed["Mixed_6d.branch1x1.conv.weights"] = renamed.pop("Mixed_6d.branch1x1.conv.weight")
    with pytest.raises(ValueError, match=r"Mixed_6d\.branch1x1\.conv\.weight'") as e:
        Inception.from_state_dict(renamed)
    assert "pt_inception-2015-12-05-6726825d.pth" in str(e.value) and "fid_weights" in str(e.value)
    assert "unexpected tensor 'Mixed_6d.branch1x1.conv.weights'" in str(e.value)
    bad = dict(state_dict, **{"Mixed_7c.branch_pool.bn.running_var": np.ones(193, np.float32)})
    with pytest.raises(ValueError, match=r"Mixed_7c\.branch_pool\.bn\.running_var.*\(193,\)"):
        Inception.from_state_dict(bad)


def test_torchvision_inception_is_rejected(state_dict):
    """torchvision's ImageNet Inception3 has 1000 classes and an aux head: not the FID network."""
    tv = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32),
                             "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match="FID Inception") as e:
        Inception.from_state_dict(tv)
    assert "'fc.weight'" in str(e.value) and "AuxLogits.fc.weight" in str(e.value)


def test_bad_arguments(net, state_dict):
    with pytest.raises(ValueError, match="resize mode 'bicubic'"):
        Inception.from_state_dict(state_dict, resize="bicubic")
    with pytest.raises(ValueError, match="resize mode"):
        inception_input(np.zeros((1, 8, 8, 3), np.uint8), "clean-fid")
    with pytest.raises(ValueError, match="dtype 'float16'"):
        Inception.from_state_dict(state_dict, dtype="float16")
    with pytest.raises(ValueError, match="found dtype float32"):
        net(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"found shape \(1, 3, 64, 64\)"):
        net(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"found shape \(64, 64, 3\)"):
        net(np.zeros((64, 64, 3), np.uint8))


def test_bfloat16(state_dict, cases):
    """bf16 convs and activations (params folded in fp32, then rounded): measured max error relative to
    each array's max on this fixture ~6e-3 (pool3), ~5e-3 (logits), ~2e-2 (spatial: stored in bf16)."""
    net16 = Inception.from_state_dict(state_dict, dtype="bfloat16", batch_size=3)
    out = net16(cases["images_64"])
    for ours, ref in OUTPUTS.items():
        assert out[ours].dtype == np.float32 and np.isfinite(out[ours]).all()
        err = rel_err(out[ours], cases[f"{ref}_64"])
        print(f"[bf16] 64px {ours}: max err / max |ref| = {err:.2e}")
        assert err <= (5e-2 if ours == "spatial" else 2e-2), (ours, err)
