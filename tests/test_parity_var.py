"""Numerical parity with the official PyTorch VAR (fixture `var_tiny`, see its README for the data).

Tolerances are the fixture README's: 1e-4 on features and logits, 5e-4 on images, exact indices.
The fixture is NCHW; arjax is NHWC. Expensive jitted results (teacher-forced logits, the encoder,
the greedy sampler) are computed once per module and shared by the tests that check them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close, float64_cross_entropy as _ce, maxerr, nhwc

ATOL_FEAT = 1e-4    # features, f-hat, logits, CE
ATOL_IMG = 5e-4     # decoded images


def jit_method(module, fn):
    """jax.jit of fn(module, *args) with the module's state as an argument (not baked-in constants)."""
    gd, st = nnx.split(module)
    jitted = jax.jit(lambda s, *a: fn(nnx.merge(gd, s), *a))
    return lambda *a: jitted(st, *a)


# ---------------------------------------------------------------------------------------------
# shared results
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(var_tiny_pipe):
    return var_tiny_pipe.tokenizer.module


@pytest.fixture(scope="module")
def model(var_tiny_pipe):
    return nnx.merge(var_tiny_pipe.graphdef, var_tiny_pipe.state)


@pytest.fixture(scope="module")
def gt_idx(var_cases):
    return var_cases["gt_idx"].astype(np.int32)


@pytest.fixture(scope="module")
def quantize_fn(tok):
    """f (B, h, w, Cvae) -> (indices (B, L), final f_hat), jitted once."""
    def run(t, f):
        idx_list, f_hat = t.quantize.quantize(f)
        return jnp.concatenate(idx_list, axis=1), f_hat
    fn = jit_method(tok, run)
    return lambda f: tuple(np.asarray(a) for a in fn(f))


@pytest.fixture(scope="module")
def quantized(quantize_fn, var_cases):
    """quantiser fed the reference `vae_f`."""
    return quantize_fn(nhwc(var_cases["vae_f"]))


@pytest.fixture(scope="module")
def logits_tf(model, var_cases):
    """Teacher-forced logits (B, L, V) from the fixture's `var_input`: cond labels and all-uncond."""
    fwd = jit_method(model, lambda m, y, x: m(y, x))
    x = var_cases["var_input"]
    cond = np.asarray(fwd(var_cases["labels"].astype(np.int32), x), np.float64)
    uncond = np.asarray(fwd(np.full(2, 1000, np.int32), x), np.float64)
    return cond, uncond


@pytest.fixture(scope="module")
def features(tok, var_cases):
    return np.asarray(jit_method(tok, lambda t, im: t.features(im))(nhwc(var_cases["image"])))


@pytest.fixture(scope="module")
def greedy_sample(tok, model, var_cases):
    """VAR's autoregressive_infer_cfg(cfg=1.5, top_k=1, top_p=0, more_smooth=False) in arjax."""
    from arjax.sample.next_scale import sample_next_scale

    tgd, tst = nnx.split(tok)
    mgd, mst = nnx.split(model)

    @jax.jit
    def run(ts, ms, labels, keys):
        return sample_next_scale(nnx.merge(tgd, ts), nnx.merge(mgd, ms), labels, keys,
                                 cfg=1.5, top_k=1, top_p=0.0, more_smooth=False)

    keys = jax.random.split(jax.random.key(0), 2)
    images, tokens, top2 = run(tst, mst, var_cases["labels"].astype(np.int32), keys)
    return np.asarray(images), np.asarray(tokens), np.asarray(top2)


# ---------------------------------------------------------------------------------------------
# 1. quantiser on vae_f
# ---------------------------------------------------------------------------------------------
def test_quantizer_on_vae_f_gives_gt_idx_exactly(quantized, var_cases):
    idx, _ = quantized
    gt = var_cases["gt_idx"]
    bad = np.argwhere(idx != gt)
    assert bad.size == 0, (f"{len(bad)} token(s) differ from gt_idx, first at (b, pos) {bad[0].tolist()} "
                           f"(reference margin there {var_cases['gt_idx_margin'][tuple(bad[0])]:.3g})")


def test_quantizer_final_fhat(quantized, var_cases):
    assert_close("quantize f_hat", quantized[1], nhwc(var_cases["vae_fhat_ms"][-1]), ATOL_FEAT)


# ---------------------------------------------------------------------------------------------
# 2. gt_idx -> f_hat per scale, var_input, recon_image
# ---------------------------------------------------------------------------------------------
def test_cumulative_fhat_per_scale(tok, gt_idx, var_cases):
    fhats = jit_method(tok, lambda t, i: t.quantize.indices_to_fhat(i, cumulative=True))(gt_idx)
    want = var_cases["vae_fhat_ms"]
    assert len(fhats) == len(want) == len(var_cases["patch_nums"])
    errs = [maxerr(f, nhwc(w)) for f, w in zip(fhats, want)]
    print(f"[parity] f_hat per scale: max abs err {max(errs):.3g} (atol {ATOL_FEAT:g})")
    assert max(errs) <= ATOL_FEAT, f"per-scale f_hat errors {np.round(errs, 7).tolist()}"


def test_var_input(var_tiny_pipe, gt_idx, var_cases):
    assert_close("var_input", var_tiny_pipe.tokenizer.var_input(gt_idx), var_cases["var_input"], ATOL_FEAT)


def test_recon_image(var_tiny_pipe, gt_idx, var_cases):
    img = np.asarray(var_tiny_pipe.tokenizer.decode(gt_idx))
    assert_close("recon_image", img, nhwc(var_cases["recon_image"]), ATOL_IMG)


# ---------------------------------------------------------------------------------------------
# 3. VAR teacher-forced logits
# ---------------------------------------------------------------------------------------------
def test_logit_columns_cond(logits_tf, var_cases):
    stride = int(var_cases["logits_col_stride"])
    assert_close("logits[..., ::8] cond", logits_tf[0][..., ::stride], var_cases["var_logits_cols"], ATOL_FEAT)


def test_logit_columns_uncond(logits_tf, var_cases):
    stride = int(var_cases["logits_col_stride"])
    assert_close("logits[..., ::8] uncond", logits_tf[1][..., ::stride], var_cases["var_logits_uncond_cols"],
                 ATOL_FEAT)


def test_logit_lse_max_at_gt(logits_tf, var_cases):
    lg = logits_tf[0]
    m = lg.max(-1)
    lse = m + np.log(np.exp(lg - m[..., None]).sum(-1))
    assert_close("logsumexp", lse, var_cases["var_logits_lse"], ATOL_FEAT)
    assert_close("max", m, var_cases["var_logits_max"], ATOL_FEAT)
    at_gt = np.take_along_axis(lg, var_cases["gt_idx"][..., None], -1)[..., 0]
    assert_close("logit at gt", at_gt, var_cases["var_logits_at_gt"], ATOL_FEAT)


def test_logit_argmax(logits_tf, var_cases):
    lg = logits_tf[0]
    srt = np.sort(lg, -1)
    gap = srt[..., -1] - srt[..., -2]
    am = lg.argmax(-1)
    differ = am != var_cases["var_logits_argmax"]
    print(f"[parity] argmax: {int(differ.sum())} differ; min top1-top2 gap {gap.min():.3g}")
    # exact, except where our own top-2 are closer than the logit tolerance (a tie at fp32 noise)
    assert not np.any(differ & (gap > ATOL_FEAT)), f"argmax differs at {np.argwhere(differ).tolist()[:5]}"
    assert differ.mean() <= 0.001


def test_cross_entropy_and_train_loss(logits_tf, var_cases):
    lg, gt = logits_tf[0], var_cases["gt_idx"]
    ce = _ce(lg, gt)
    assert_close("CE", ce, var_cases["var_ce"], ATOL_FEAT)
    assert_close("CE label_smoothing=0.1", _ce(lg, gt, 0.1), var_cases["var_ce_ls0p1"], ATOL_FEAT)
    assert_close("train_loss", ce.mean(), var_cases["train_loss"], ATOL_FEAT)


def test_cross_entropy_with_torch_on_our_logits(logits_tf, var_cases):
    torch = pytest.importorskip("torch", reason="torch not installed: skip the torch-computed CE check")
    lg = torch.from_numpy(logits_tf[0].astype(np.float32)).reshape(-1, logits_tf[0].shape[-1])
    gt = torch.from_numpy(var_cases["gt_idx"].reshape(-1))
    for ls, key in ((0.0, "var_ce"), (0.1, "var_ce_ls0p1")):
        ce = torch.nn.functional.cross_entropy(lg, gt, reduction="none", label_smoothing=ls).numpy()
        assert_close(f"torch CE ls={ls}", ce.reshape(var_cases[key].shape), var_cases[key], ATOL_FEAT)


def test_pipeline_logits_from_gt_idx(var_tiny_pipe, gt_idx, var_cases):
    """The public path: tokens -> own var_input -> logits."""
    lg = np.asarray(var_tiny_pipe.logits(gt_idx, var_cases["labels"]))
    assert lg.shape == (2, 680, 4096) and lg.dtype == np.float32
    stride = int(var_cases["logits_col_stride"])
    assert_close("pipeline logits[..., ::8]", lg[..., ::stride], var_cases["var_logits_cols"], ATOL_FEAT)


# ---------------------------------------------------------------------------------------------
# 4. encoder
# ---------------------------------------------------------------------------------------------
def test_encoder_features(features, var_cases):
    assert_close("vae_f", features, nhwc(var_cases["vae_f"]), ATOL_FEAT)


def test_image_to_indices_agreement(features, quantize_fn, var_cases):
    """image -> encoder -> quantiser (what Tokenizer.encode composes). Indices may flip where the
    reference's best/second-best distance margin is below fp32 noise, hence agreement, not equality."""
    idx = quantize_fn(features)[0]
    agree = float((idx == var_cases["gt_idx"]).mean())
    print(f"[parity] image -> idx agreement {agree:.5f} (need >= 0.995)")
    assert agree >= 0.995
    # the first scales average many latent positions: they must agree exactly
    assert np.array_equal(idx[:, :30], var_cases["gt_idx"][:, :30])


# ---------------------------------------------------------------------------------------------
# 5. greedy CFG sampling
# ---------------------------------------------------------------------------------------------
def test_greedy_sample_indices(greedy_sample, var_cases):
    tokens = greedy_sample[1]
    bad = np.argwhere(tokens != var_cases["sample_idx"])
    assert bad.size == 0, f"{len(bad)} sampled token(s) differ, first at (b, pos) {bad[0].tolist()}"


def test_greedy_sample_top2(greedy_sample, var_cases):
    assert_close("sample_top2", greedy_sample[2], var_cases["sample_top2"], ATOL_FEAT)


def test_greedy_sample_image(greedy_sample, var_cases):
    img = greedy_sample[0]
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert_close("sample_image", img, nhwc(var_cases["sample_image"]), ATOL_IMG)


def test_greedy_sample_fhat(tok, greedy_sample, var_cases):
    fhat = jit_method(tok, lambda t, i: t.quantize.indices_to_fhat(i))(greedy_sample[1])
    assert_close("sample_fhat", fhat, nhwc(var_cases["sample_fhat"]), ATOL_FEAT)
