"""Numerical parity with the official PyTorch FlexVAR (fixture `flexvar_tiny`, see its README).

Tolerances are the README's: 1e-4 on features, logits and CE, 5e-4 on images, exact indices. The
fixture is NCHW; arjax is NHWC. Matmuls run at "highest" precision (set for every test in
conftest.py). Expensive jitted results are computed once per module. Tests that need the fixture skip
without it; the last two (forced tokens, an unseen schedule, on a tiny random model) always run.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES, assert_close, float64_cross_entropy as _ce, nhwc

ATOL_FEAT = 1e-4    # features, var_input, positions, logits, CE
ATOL_IMG = 5e-4     # decoded images
SCHEDULES = ("std", "alt")


def assert_equal_idx(name, got, want):
    bad = np.argwhere(np.asarray(got) != np.asarray(want))
    assert bad.size == 0, f"{name}: {len(bad)} index(es) differ, first at {bad[0].tolist()}"


def jit_method(module, fn):
    """jax.jit of fn(module, *args) with the module's state as an argument (not baked-in constants)."""
    gd, st = nnx.split(module)
    jitted = jax.jit(lambda s, *a: fn(nnx.merge(gd, s), *a))
    return lambda *a: jitted(st, *a)


def compile_once(fn, *args, optimize=True):
    """jax.jit(fn) compiled for args. A graph run once per test compiles 3x faster on CPU without
    backend optimisation; the program and its parity checks are the same."""
    opts = None if optimize or jax.default_backend() != "cpu" else {"xla_backend_optimization_level": 0}
    return jax.jit(fn).lower(*args).compile(compiler_options=opts)


def run_sampler(tok, model, labels, keys, *, optimize=True, **kw):
    from arjax.sample.flexvar import sample_flexvar
    (tgd, tst), (mgd, mst) = nnx.split(tok), nnx.split(model)
    def fn(ts, ms, y, k):
        return sample_flexvar(nnx.merge(tgd, ts), nnx.merge(mgd, ms), y, k, **kw)
    args = (tst, mst, labels, keys)
    return tuple(np.asarray(a) for a in compile_once(fn, *args, optimize=optimize)(*args))


# ---------------------------------------------------------------------------------------------
# shared results (fixture needed)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files():
    d = FIXTURES / "flexvar_tiny"
    if not (d / "cases.npz").is_file():
        pytest.skip(reason=f"parity fixture {d} is absent (set ARJAX_FIXTURES to the shared/fixtures folder)")
    return d


@pytest.fixture(scope="module")
def cases(files):
    with np.load(files / "cases.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def mods(files):
    from arjax.convert.flexvar import load_flexvar
    return load_flexvar(files / "vae.safetensors", files / "var.safetensors")


@pytest.fixture(scope="module")
def tok(mods):
    return mods[0]


@pytest.fixture(scope="module")
def model(mods):
    return mods[1]


def pns_of(cases, name):
    return tuple(int(p) for p in cases[f"patch_nums_{name}"])


@pytest.fixture(scope="module")
def quantize_fns(tok, cases):
    """Per schedule, jitted f (B, h, w, Cvae) -> indices (B, L)."""
    def make(pns):
        return jit_method(tok, lambda t, f: jnp.concatenate(t.quantize.quantize(f, pns)[0], axis=1))
    return {name: make(pns_of(cases, name)) for name in SCHEDULES}


@pytest.fixture(scope="module")
def logits_tf(model, cases):
    """Teacher-forced logits (float64 numpy) from the fixture's var_input: cond per schedule, uncond for std."""
    out, labels = {}, cases["labels"].astype(np.int32)
    for name in SCHEDULES:
        pns = pns_of(cases, name)
        fwd = jit_method(model, lambda m, y, x: m(y, x, pns))
        out[name] = np.asarray(fwd(labels, cases[f"var_input_{name}"]), np.float64)
        if name == "std":
            out["uncond"] = np.asarray(fwd(np.full(2, 1000, np.int32), cases["var_input_std"]), np.float64)
    return out


@pytest.fixture(scope="module")
def encoded(tok, cases):
    return tuple(np.asarray(a) for a in jit_method(tok, lambda t, im: (t.encoder(im), t.features(im)))(
        nhwc(cases["image"])))


# ---------------------------------------------------------------------------------------------
# 1. quantiser on vae_f, teacher-forcing input, positions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_quantizer_on_vae_f_gives_gt_idx_exactly(quantize_fns, cases, name):
    assert_equal_idx(f"gt_idx_{name}", quantize_fns[name](nhwc(cases["vae_f"])), cases[f"gt_idx_{name}"])


@pytest.mark.parametrize("name", SCHEDULES)
def test_var_input(tok, cases, name):
    pns = pns_of(cases, name)
    to_input = jit_method(tok, lambda t, i: t.quantize.indices_to_var_input(i, pns))
    got = to_input(cases[f"gt_idx_{name}"].astype(np.int32))
    assert_close(f"var_input_{name}", got, cases[f"var_input_{name}"], ATOL_FEAT)


def test_positions(model, cases):
    assert_close("pos_std", model.positions(pns_of(cases, "std"))[0], cases["pos_std"], ATOL_FEAT)


# ---------------------------------------------------------------------------------------------
# 2. teacher-forced logits, CE, train loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_logits(logits_tf, cases, name):
    lg, stride = logits_tf[name], int(cases["logits_col_stride"])
    assert_close(f"logits_{name} cols", lg[..., ::stride], cases[f"logits_{name}_cols"], ATOL_FEAT)
    m = lg.max(-1)
    assert_close(f"logits_{name} lse", m + np.log(np.exp(lg - m[..., None]).sum(-1)), cases[f"logits_{name}_lse"],
                 ATOL_FEAT)
    assert_close(f"logits_{name} max", m, cases[f"logits_{name}_max"], ATOL_FEAT)
    gt = cases[f"gt_idx_{name}"]
    assert_close(f"logits_{name} at gt", np.take_along_axis(lg, gt[..., None], -1)[..., 0],
                 cases[f"logits_{name}_at_gt"], ATOL_FEAT)
    srt = np.sort(lg, -1)
    print(f"[parity] logits_{name}: min top1-top2 gap {np.min(srt[..., -1] - srt[..., -2]):.3g}")
    assert_equal_idx(f"logits_{name} argmax", lg.argmax(-1), cases[f"logits_{name}_argmax"])


@pytest.mark.parametrize("name", SCHEDULES)
def test_cross_entropy_and_train_loss(logits_tf, cases, name):
    ce = _ce(logits_tf[name], cases[f"gt_idx_{name}"])
    assert_close(f"ce_{name}", ce, cases[f"ce_{name}"], ATOL_FEAT)
    assert_close(f"train_loss_{name}", ce.mean(), cases[f"train_loss_{name}"], ATOL_FEAT)
    if name == "std":
        assert_close("ce_std_ls0p1", _ce(logits_tf[name], cases["gt_idx_std"], 0.1), cases["ce_std_ls0p1"], ATOL_FEAT)


def test_uncond_logits(logits_tf, cases):
    lg, stride = logits_tf["uncond"], int(cases["uncond_logits_col_stride"])
    assert_close("logits_uncond_std cols", lg[..., ::stride], cases["logits_uncond_std_cols"], ATOL_FEAT)
    m = lg.max(-1)
    assert_close("logits_uncond_std lse", m + np.log(np.exp(lg - m[..., None]).sum(-1)),
                 cases["logits_uncond_std_lse"], ATOL_FEAT)
    assert_equal_idx("logits_uncond_std argmax", lg.argmax(-1), cases["logits_uncond_std_argmax"])


# ---------------------------------------------------------------------------------------------
# 3. decoder, encoder
# ---------------------------------------------------------------------------------------------
def test_decoder(tok, cases):
    from arjax.ops import scales
    pns = pns_of(cases, "std")
    gt = cases["gt_idx_std"].astype(np.int32)
    dec = jit_method(tok, lambda t, m: t.decode_map(m))
    for si, key in ((len(pns) - 1, "recon_image"), (pns.index(8), "recon_image_pn8")):
        s, e = scales.begin_ends(pns)[si]
        assert_close(key, dec(gt[:, s:e].reshape(2, pns[si], pns[si])), nhwc(cases[key]), ATOL_IMG)


def test_encoder(encoded, cases):
    assert_close("vae_h", encoded[0], nhwc(cases["vae_h"]), ATOL_FEAT)
    assert_close("vae_f", encoded[1], nhwc(cases["vae_f"]), ATOL_FEAT)


def test_image_to_indices(encoded, quantize_fns, cases):
    """image -> encoder -> quantiser (what `encode` composes). No reference margin is below fp32
    noise, so the indices must match exactly."""
    assert_equal_idx("image -> gt_idx_std", quantize_fns["std"](encoded[1]), cases["gt_idx_std"])


# ---------------------------------------------------------------------------------------------
# 4. greedy CFG sampling (top_k = 1)
# ---------------------------------------------------------------------------------------------
def _check_sample(tok, model, cases, prefix, schedule, **kw):
    images, tokens, top2 = run_sampler(tok, model, cases["labels"].astype(np.int32),
                                       jax.random.split(jax.random.key(42), 2),
                                       patch_nums=pns_of(cases, schedule), top_k=1, raw=True, **kw)
    assert_equal_idx(f"{prefix}_idx", tokens, cases[f"{prefix}_idx"])
    assert_close(f"{prefix}_top2", top2, cases[f"{prefix}_top2"], ATOL_FEAT)
    if f"{prefix}_image" in cases:
        assert_close(f"{prefix}_image", images, nhwc(cases[f"{prefix}_image"]), ATOL_IMG)


def test_sample_std_var_cfg(tok, model, cases):
    _check_sample(tok, model, cases, "sample_std", "std", cfg=2.5, optimize=False)


def test_sample_std_llamagen_cfg(tok, model, cases):
    _check_sample(tok, model, cases, "sample_std_llamagen_cfg", "std", cfg=4.0, cfg_style="llamagen",
                  optimize=False)


@pytest.mark.slow
def test_sample_zero_shot_512(tok, model, cases):
    _check_sample(tok, model, cases, "sample_zs", "zs", cfg=3.0)


def test_cfg_ramp_matches_reference_t(files):
    import json
    from arjax.sample.flexvar import cfg_scale
    sampling = json.loads((files / "config.json").read_text())["sampling"]
    for run in ("std", "zs"):
        kw = sampling[run]["kwargs"]
        pns = kw["infer_patch_nums"]
        got = [cfg_scale(kw["cfg"], si, pn, len(pns), kw["max_pn"]) for si, pn in enumerate(pns)]
        np.testing.assert_allclose(got, sampling[run]["t_per_scale"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 5. converter errors name the tensor
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def state_dicts(files):
    from arjax.convert.state_dict import load_state_dict
    return load_state_dict(files / "vae.safetensors"), load_state_dict(files / "var.safetensors")


@pytest.mark.parametrize("which,key,change", [
    (1, "blocks.1.ffn.fc2.weight", "shape"),
    (1, "head_nm.ada_lin.1.bias", "drop"),
    (0, "decoder.conv_blocks.3.res.0.nin_shortcut.weight", "shape"),
    (0, "encoder.conv_blocks.4.attn.1.k.weight", "drop"),
    (0, "decoder.mid.1.v.bias", "shape"),
])
def test_converter_error_names_the_tensor(state_dicts, which, key, change):
    from arjax.convert.flexvar import flexvar_params
    sds = [dict(sd) for sd in state_dicts]
    if change == "drop":
        del sds[which][key]
    else:
        sds[which][key] = np.zeros(sds[which][key].shape[:-1] + (sds[which][key].shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        flexvar_params(*sds)


def test_convert_writes_model_dir(files, tmp_path, state_dicts):
    import json
    from arjax.convert.flexvar import convert_flexvar
    from arjax.nn.init import abstract_params
    from arjax.nn.models.flexvar import FlexVAR, FlexVARConfig
    from arjax.nn.tokenizers.flexvq import FlexVQConfig, FlexVQVAE
    from arjax.train import checkpoint
    out = convert_flexvar(files / "vae.safetensors", files / "var.safetensors", tmp_path / "m")
    meta = json.loads((out / checkpoint.META_FILE).read_text())
    assert meta["family"] == "flexvar" and meta["model"]["pos_grid"] == 32 and meta["tokenizer"]["enc_channels"] == 32
    params = checkpoint.load_params(out, {
        "tokenizer": abstract_params(FlexVQVAE, FlexVQConfig(**meta["tokenizer"])),
        "model": abstract_params(FlexVAR, FlexVARConfig(**meta["model"]))})
    vae_sd, var_sd = state_dicts
    np.testing.assert_array_equal(params["model"]["pos_1LC"], var_sd["pos_1LC"])  # stored channel-first as is
    att = "decoder.conv_blocks.0.attn.2"   # decoder levels are reversed: torch level 0 = arjax up[4]
    qkv = np.concatenate([vae_sd[f"{att}.{p}.weight"] for p in "qkv"])[:, :, 0, 0].T
    np.testing.assert_array_equal(params["tokenizer"]["decoder"]["up"][4]["attn"][2]["qkv"]["kernel"][0, 0], qkv)


# ---------------------------------------------------------------------------------------------
# 6. sampler behaviour on a tiny random model (no fixture)
# ---------------------------------------------------------------------------------------------
TINY_PNS = (1, 3, 5, 9, 12)   # sides above the grid (8) and above max_pn (4): never trained on


def random_module(cls, cfg, seed):
    """A module with N(0, 0.1^2) parameters: no init graph to compile (the sampler only needs values)."""
    from arjax.nn.init import abstract_module
    module, rng = abstract_module(cls, cfg), np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype),
                                                 nnx.to_pure_dict(state)))
    nnx.update(module, state)
    return module


@pytest.fixture(scope="module")
def tiny_runs():
    """One jitted sampler on a tiny random model at an unseen schedule, run with and without forcing."""
    from arjax.nn.models.flexvar import FlexVAR, FlexVARConfig
    from arjax.nn.tokenizers.flexvq import FlexVQConfig, FlexVQVAE
    from arjax.ops import scales
    from arjax.sample.flexvar import sample_flexvar
    tcfg = FlexVQConfig(vocab_size=64, z_channels=8, enc_channels=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        using_sa=False, using_mid_sa=False, patch_nums=(1, 2, 3, 4))
    mcfg = FlexVARConfig(depth=1, embed_dim=32, num_heads=2, num_classes=10, vocab_size=64, cvae=8,
                         patch_nums=(1, 2, 3, 4), pos_grid=8, max_pn=4)
    tok, model = random_module(FlexVQVAE, tcfg, 0), random_module(FlexVAR, mcfg, 1)
    (tgd, tst), (mgd, mst) = nnx.split(tok), nnx.split(model)

    def run(ts, ms, y, k, ft, fm):
        return sample_flexvar(nnx.merge(tgd, ts), nnx.merge(mgd, ms), y, k, patch_nums=TINY_PNS, cfg=2.0, top_k=5,
                              top_p=0.9, forced_tokens=ft, forced_mask=fm, reference_greedy_sides=True)

    b, l = 3, scales.seq_len(TINY_PNS)
    rng = np.random.default_rng(0)
    forced = rng.integers(0, 64, (b, l)).astype(np.int32)
    mask = rng.random((b, l)) < 0.5
    args = (tst, mst, np.array([1, 2, 10], np.int32), jax.random.split(jax.random.key(3), b), forced)
    compiled = compile_once(run, *args, mask, optimize=False)
    out = {name: tuple(np.asarray(a) for a in compiled(*args, m))
           for name, m in (("forced", mask), ("free", np.zeros_like(mask)))}
    return out, forced, mask


def test_forced_tokens_are_kept_at_every_scale(tiny_runs):
    from arjax.ops import scales
    out, forced, mask = tiny_runs
    tokens = out["forced"][1]
    np.testing.assert_array_equal(tokens[mask], forced[mask])
    for s, e in scales.begin_ends(TINY_PNS):  # every scale has forced positions, so every scale was checked
        assert mask[:, s:e].any()
    assert (out["free"][1][mask] != forced[mask]).any()   # forcing did change the draws


def test_sampling_at_an_unseen_schedule(tiny_runs):
    from arjax.ops import scales
    out = tiny_runs[0]
    l = scales.seq_len(TINY_PNS)
    for images, tokens, top2 in out.values():
        assert images.shape == (3, 24, 24, 3) and tokens.shape == (3, l) and top2.shape == (3, l, 2)
        assert tokens.dtype == np.int32 and images.min() >= 0 and images.max() <= 1 and np.isfinite(top2).all()


def test_cli_convert_then_public_api_matches_reference(files, cases, tmp_path, capsys):
    """`arjax convert flexvar` -> `arjax.load` -> the pipeline's teacher-forced logits at the `alt`
    schedule (a FlexVAR-only option of the public API) match the reference."""
    import arjax
    from arjax import cli
    out = tmp_path / "model"
    assert cli.main(["convert", "flexvar", "--vae", str(files / "vae.safetensors"), "--var",
                     str(files / "var.safetensors"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = arjax.load(out)
    alt = tuple(int(p) for p in cases["patch_nums_alt"])
    logits = np.asarray(pipe.logits(cases["gt_idx_alt"], cases["labels"], patch_nums=alt), np.float64)
    lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    assert np.abs(lse - cases["logits_alt_lse"]).max() <= ATOL_FEAT
