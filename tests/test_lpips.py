"""LPIPS-VGG: loading user-supplied torch-layout weights, parity with a float64 NumPy reference, gradients."""
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import lpips_numpy as ref  # noqa: E402

from arjax.nn.lpips import load_lpips, lpips_distance  # noqa: E402


def random_weights(seed: int = 0):
    """Torch-layout vgg16 `features.*` and lpips `lin*` state dicts. He init keeps activations O(1)
    through all 13 convs; the lin weights are non-negative like the released ones."""
    rng = np.random.default_rng(seed)
    vgg, cin, taps, idx = {}, 3, [], 0
    for v in ref.VGG16_CFG:
        if v == "M":            # the conv before each pool is a tap
            taps.append(cin)
            idx += 1
            continue
        he = np.sqrt(2 / (9 * cin))
        vgg[f"features.{idx}.weight"] = (he * rng.standard_normal((v, cin, 3, 3))).astype(np.float32)
        vgg[f"features.{idx}.bias"] = (0.05 * rng.standard_normal(v)).astype(np.float32)
        cin, idx = v, idx + 2   # conv, ReLU
    lin = {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, c, 1, 1)).astype(np.float32) for k, c in enumerate(taps)}
    return vgg, lin


@pytest.fixture(scope="module")
def weights():
    return random_weights()


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    save_file(weights[0], str(d / "vgg16.safetensors"))
    save_file(weights[1], str(d / "vgg.safetensors"))
    return d / "vgg16.safetensors", d / "vgg.safetensors"


@pytest.fixture(scope="module")
def loaded(files):
    graphdef, params = load_lpips(*files)
    return params, jax.jit(functools.partial(lpips_distance, graphdef))


def images(seed, b=2, hw=32):
    return np.random.default_rng(seed).uniform(-1, 1, (b, hw, hw, 3)).astype(np.float32)


def test_matches_numpy_reference(weights, loaded):
    params, dist = loaded
    x, y = images(1), images(2)
    y[1] = np.clip(x[1] + 0.1 * y[1], -1, 1)   # one far pair, one near pair
    with jax.default_matmul_precision("highest"):
        got = np.asarray(dist(params, x, y), np.float64)
    want = ref.lpips(x, y, *weights, nhwc=True)
    assert got.shape == (2,) and np.all(want > 0)
    err = np.abs(got - want)
    print(f"LPIPS parity: got {got}, want {want}, max abs err {err.max():.2e}, max rel err {(err / want).max():.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_self_distance_and_gradients(loaded):
    params, dist = loaded
    x, y = images(3), images(4)
    np.testing.assert_allclose(np.asarray(dist(params, x, x)), 0.0, atol=1e-6)

    # used as a training loss: gradient reaches the image, and the weights are constants
    grad = jax.jit(jax.grad(lambda p, a, b: jnp.sum(dist(p, a, b)), argnums=(0, 1)))
    g_params, g_x = grad(params, x, y)
    g_x = np.asarray(g_x)
    assert np.all(np.isfinite(g_x)) and np.abs(g_x).max() > 0
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_params))
    # at x == y the distance is at its minimum: zero, finite gradient
    assert np.all(np.isfinite(np.asarray(grad(params, x, x)[1])))


def test_bad_weights_name_the_tensor(weights, tmp_path):
    vgg, lin = weights
    good_vgg, good_lin = tmp_path / "good_vgg.safetensors", tmp_path / "good_lin.safetensors"
    save_file(vgg, str(good_vgg))
    save_file(lin, str(good_lin))

    missing = tmp_path / "lin_missing.safetensors"
    save_file({k: v for k, v in lin.items() if k != "lin3.model.1.weight"}, str(missing))
    with pytest.raises(ValueError, match=r"missing tensor 'lin3\.model\.1\.weight'"):
        load_lpips(good_vgg, missing)

    bad_shape = tmp_path / "vgg_bad_shape.safetensors"
    save_file({**vgg, "features.10.weight": vgg["features.10.weight"][:, :64]}, str(bad_shape))
    with pytest.raises(ValueError, match=r"tensor 'features\.10\.weight': expected shape \(256, 128, 3, 3\)"):
        load_lpips(bad_shape, good_lin)

    # a stray tensor that is not a known vgg16 head is reported, so a wrong file does not load silently
    stray = tmp_path / "lin_stray.safetensors"
    save_file({**lin, "net.slice1.0.weight": np.zeros((2, 2), np.float32)}, str(stray))
    with pytest.raises(ValueError, match=r"unexpected tensor 'net\.slice1\.0\.weight'"):
        load_lpips(good_vgg, stray)


def test_full_vgg16_file_loads(weights, loaded, tmp_path):
    vgg, lin = weights
    full = tmp_path / "vgg16_full.safetensors"
    # the real classifier.0.weight is (4096, 25088); the shape is irrelevant to loading, so keep it small
    save_file({**vgg, "classifier.0.weight": np.zeros((8, 16), np.float32),
               "classifier.0.bias": np.zeros(8, np.float32)}, str(full))
    save_file(lin, str(tmp_path / "lin.safetensors"))
    _, params = load_lpips(full, tmp_path / "lin.safetensors")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded[0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(params["features"]["28"]["kernel"]),
                                  vgg["features.28.weight"].transpose(2, 3, 1, 0))


@pytest.mark.slow  # ~17 s of training; the distance itself is checked above (15 min budget)
def test_tokenizer_trains_with_the_perceptual_loss(files, tmp_path):
    from arjax.config import load_config
    from arjax.train.trainer import train
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(str(repo / "configs" / "quickstart.py") + ":tokenizer", [
        "tokenizer.ch_mult=(1,2)", "tokenizer.patch_nums=(1,2,4,8)", "tokenizer.vocab_size=64",
        "tokenizer.z_channels=8", "batch_size=2", "log_every=1", "sample_every=0", "steps=3",
        "loss.perceptual=1.0", f"loss.lpips_vgg={files[0]}", f"loss.lpips_lin={files[1]}"])
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["finished"] and all(np.isfinite(h["perceptual"]) and h["perceptual"] > 0 for h in s["history"])
