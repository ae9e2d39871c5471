"""The converter and the models are generic: VAR of any depth / width / heads / MLP ratio / AdaLN
sharing / schedule, and VQVAE of any ch / ch_mult / res blocks / phi sharing.

Random torch-layout state dicts (tests/reference/var_numpy.py builds them; their key lists are
checked against the real fixture checkpoints) are written as .safetensors, converted with
`arjax.convert.var.convert_var`, loaded with `arjax.load`, and compared with the independent
float64 NumPy reference. The NumPy reference itself is validated against the PyTorch fixture.
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import var_numpy as R  # noqa: E402

import arjax  # noqa: E402
from arjax.convert.var import convert_var  # noqa: E402

VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
ATOL_REL = 1e-4     # logits / features, relative to the reference's scale
ATOL_IMG = 5e-4


def jit_method(module, fn):
    gd, st = nnx.split(module)
    jitted = jax.jit(lambda s, *a: fn(nnx.merge(gd, s), *a))
    return lambda *a: jitted(st, *a)


def assert_close_scaled(name, got, want, rel=ATOL_REL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    print(f"[any-size] {name}: max abs err {err:.3g} (scale {scale:.3g}, atol {rel * scale:.3g})")
    assert err <= rel * scale, f"{name}: max abs err {err:.3g} > {rel * scale:.3g}"


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def nhwc_to_nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


# =============================================================================================
# the NumPy reference vs the PyTorch fixture
# =============================================================================================
@pytest.fixture(scope="module")
def fixture_sds(var_tiny_files):
    return (load_file(str(var_tiny_files / "var.safetensors")),
            load_file(str(var_tiny_files / "vae.safetensors")))


TINY_VAR = dict(depth=2, embed_dim=128, num_heads=2, mlp_ratio=4.0, vocab_size=4096, cvae=32,
                num_classes=1000, patch_nums=VAR_256, shared_aln=False, attn_l2_norm=True)
TINY_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, vocab_size=4096,
                share_quant_resi=4, num_scales=10)


def test_state_dict_layouts_match_fixture_checkpoints(fixture_sds):
    var_sd, vae_sd = fixture_sds
    for what, shapes, sd in (("VAR", R.var_param_shapes(**TINY_VAR), var_sd),
                             ("VQVAE", R.vqvae_param_shapes(**TINY_VAE), vae_sd)):
        real = {k: tuple(v.shape) for k, v in sd.items()}
        assert set(shapes) == set(real), (what, sorted(set(shapes) ^ set(real))[:10])
        assert {k: tuple(s) for k, s in shapes.items()} == real, what
    assert len(vae_sd) == 324 and len(var_sd) == 38


def test_numpy_reference_logits_match_fixture(fixture_sds, var_cases):
    var_sd, _ = fixture_sds
    x, y, gt = var_cases["var_input"], var_cases["labels"], var_cases["gt_idx"]
    lg = R.var_forward(var_sd, y, x, VAR_256)
    assert_close_scaled("ref logits[::8]", lg[..., ::8], var_cases["var_logits_cols"])
    assert_close_scaled("ref lse", R.logsumexp(lg), var_cases["var_logits_lse"])
    np.testing.assert_array_equal(lg.argmax(-1), var_cases["var_logits_argmax"])
    assert_close_scaled("ref CE", R.cross_entropy(lg, gt), var_cases["var_ce"])
    assert_close_scaled("ref CE ls0.1", R.cross_entropy(lg, gt, 0.1), var_cases["var_ce_ls0p1"])
    lu = R.var_forward(var_sd, np.full(2, 1000), x, VAR_256)
    assert_close_scaled("ref uncond logits[::8]", lu[..., ::8], var_cases["var_logits_uncond_cols"])
    # the blocks matter in this fixture: without them the reference would be far off
    no_blocks = {k: v for k, v in var_sd.items() if not k.startswith("blocks.")}
    assert np.abs(R.var_forward(no_blocks, y, x, VAR_256)[..., ::8] - var_cases["var_logits_cols"]).max() > 0.1


def test_numpy_reference_tokenizer_matches_fixture(fixture_sds, var_cases):
    _, vae_sd = fixture_sds
    idx, fhats, _ = R.quantize(vae_sd, var_cases["vae_f"], VAR_256)
    np.testing.assert_array_equal(idx, var_cases["gt_idx"])
    fh = R.indices_to_fhats(vae_sd, var_cases["gt_idx"], VAR_256)
    assert_close_scaled("ref f_hat per scale", np.stack(fh), var_cases["vae_fhat_ms"])
    assert_close_scaled("ref quantize f_hat", np.stack(fhats), var_cases["vae_fhat_ms"])
    assert_close_scaled("ref var_input", R.fhats_to_var_input(fh, VAR_256), var_cases["var_input"])
    # one image through the float64 decoder and encoder (256 px: a few seconds)
    assert_close_scaled("ref recon_image", R.fhat_to_img(vae_sd, fh[-1][:1]), var_cases["recon_image"][:1],
                        ATOL_IMG)
    assert_close_scaled("ref vae_f", R.img_to_f(vae_sd, var_cases["image"][1:]), var_cases["vae_f"][1:])


@pytest.mark.slow
def test_numpy_reference_greedy_sampler_matches_fixture(fixture_sds, var_cases):
    var_sd, vae_sd = fixture_sds
    tokens, top2, f_hat = R.greedy_cfg_sample(var_sd, vae_sd, var_cases["labels"], VAR_256, cfg=1.5)
    np.testing.assert_array_equal(tokens, var_cases["sample_idx"])
    assert_close_scaled("ref sample_top2", top2, var_cases["sample_top2"])
    assert_close_scaled("ref sample_fhat", f_hat, var_cases["sample_fhat"])


# =============================================================================================
# random architectures
# =============================================================================================
def small_vae(vocab_size, z_channels, patch_nums, **kw):
    arch = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=z_channels, vocab_size=vocab_size,
                share_quant_resi=4, num_scales=len(patch_nums))
    arch.update(kw)
    return arch


def small_var(vocab_size, cvae, patch_nums, **kw):
    arch = dict(depth=1, embed_dim=64, num_heads=2, mlp_ratio=4.0, vocab_size=vocab_size, cvae=cvae,
                num_classes=10, patch_nums=patch_nums)
    arch.update(kw)
    return arch


# transformer variants (paired with a small tokenizer of the same vocab / Cvae / schedule)
VAR_ARCHS = {
    "d3_c96_h3": dict(depth=3, embed_dim=96, num_heads=3, mlp_ratio=4.0, vocab_size=4096, cvae=32,
                      num_classes=1000, patch_nums=VAR_256),
    "shared_aln_mlp2.5": dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2.5, vocab_size=1024, cvae=16,
                              num_classes=10, patch_nums=(1, 2, 3, 4, 6), shared_aln=True),
    "pn1248_v512_c16": dict(depth=2, embed_dim=128, num_heads=2, mlp_ratio=3.0, vocab_size=512, cvae=16,
                            num_classes=20, patch_nums=(1, 2, 4, 8)),
    "no_l2_norm": dict(depth=2, embed_dim=128, num_heads=2, mlp_ratio=4.0, vocab_size=256, cvae=8,
                       num_classes=5, patch_nums=(1, 2, 3), attn_l2_norm=False),
}
# tokenizer variants (paired with a small transformer)
TOK_ARCHS = {
    "nonshared_phi": dict(patch_nums=(1, 2, 4, 8), ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                          vocab_size=512, share_quant_resi=0),
    "shared_phi_3res": dict(patch_nums=(1, 2, 3, 5), ch=32, ch_mult=(1, 2), num_res_blocks=3, z_channels=8,
                            vocab_size=256, share_quant_resi=1),
    "3phis_ch64_nosa": dict(patch_nums=(1, 2, 3, 4, 6, 8), ch=64, ch_mult=(1, 1, 2), num_res_blocks=2,
                            z_channels=12, vocab_size=300, share_quant_resi=3, using_sa=False),
    "4phis_nomidsa": dict(patch_nums=(1, 2, 3, 4, 6), ch=32, ch_mult=(2, 1), num_res_blocks=1, z_channels=32,
                          vocab_size=128, share_quant_resi=4, using_mid_sa=False),
}


def _build(tmp_path_factory, name, var_arch, vae_arch, seed):
    d = tmp_path_factory.mktemp(name.replace(".", "_"))
    var_sd = R.random_var_state_dict(seed, **var_arch)
    vae_sd = R.random_vqvae_state_dict(seed + 1, **vae_arch)
    save_file(var_sd, str(d / "var.safetensors"))
    save_file(vae_sd, str(d / "vae.safetensors"))
    out = convert_var(d / "vae.safetensors", d / "var.safetensors", d / "model")
    pipe = arjax.load(out)
    return dict(name=name, var_arch=var_arch, vae_arch=vae_arch, var_sd=var_sd, vae_sd=vae_sd, pipe=pipe,
                meta=json.loads((out / "arjax.json").read_text()),
                tok=pipe.tokenizer.module, model=nnx.merge(pipe.graphdef, pipe.state))


@pytest.fixture(scope="module", params=sorted(VAR_ARCHS))
def var_built(request, tmp_path_factory):
    arch = VAR_ARCHS[request.param]
    vae = small_vae(arch["vocab_size"], arch["cvae"], arch["patch_nums"])
    return _build(tmp_path_factory, request.param, arch, vae, seed=10 + sorted(VAR_ARCHS).index(request.param))


@pytest.fixture(scope="module", params=sorted(TOK_ARCHS))
def tok_built(request, tmp_path_factory):
    t = dict(TOK_ARCHS[request.param])
    pns, vocab, cvae = t.pop("patch_nums"), t.pop("vocab_size"), t.pop("z_channels")
    vae = small_vae(vocab, cvae, pns, **t)
    var = small_var(vocab, cvae, pns)
    return _build(tmp_path_factory, request.param, var, vae, seed=40 + sorted(TOK_ARCHS).index(request.param))


def test_var_config_inferred(var_built):
    a, m = var_built["var_arch"], var_built["meta"]["model"]
    assert m["depth"] == a["depth"] and m["embed_dim"] == a["embed_dim"] and m["num_heads"] == a["num_heads"]
    assert m["mlp_ratio"] == a["mlp_ratio"] and m["vocab_size"] == a["vocab_size"] and m["cvae"] == a["cvae"]
    assert m["num_classes"] == a["num_classes"] and tuple(m["patch_nums"]) == tuple(a["patch_nums"])
    assert m["shared_aln"] == a.get("shared_aln", False)
    assert m["attn_l2_norm"] == a.get("attn_l2_norm", True)


def test_var_logits_vs_numpy_reference(var_built):
    a, var_sd = var_built["var_arch"], var_built["var_sd"]
    pns = a["patch_nums"]
    L = sum(p * p for p in pns)
    rng = np.random.default_rng(123)
    x = rng.normal(0, 1, (3, L - 1, a["cvae"])).astype(np.float32)
    y = np.array([0, a["num_classes"] - 1, a["num_classes"]], np.int32)      # incl. the unconditional class
    got = jit_method(var_built["model"], lambda m, yy, xx: m(yy, xx))(y, x)
    want = R.var_forward(var_sd, y, x, pns, num_heads=a["num_heads"])
    assert got.shape == (3, L, a["vocab_size"])
    assert_close_scaled(f"{var_built['name']} logits", got, want)
    # the comparison is discriminating: the blocks change the logits by far more than the tolerance
    no_blocks = {k: v for k, v in var_sd.items() if not k.startswith("blocks.")}
    nb = R.var_forward(no_blocks, y, x, pns, num_heads=a["num_heads"])
    assert np.linalg.norm(nb - want) > 0.3 * np.linalg.norm(want)


def test_var_pipeline_logits_from_tokens_vs_numpy(var_built):
    """tokens -> tokenizer's var_input -> logits through the public Pipeline."""
    a = var_built["var_arch"]
    pns = a["patch_nums"]
    L = sum(p * p for p in pns)
    idx = np.random.default_rng(7).integers(0, a["vocab_size"], (2, L))
    y = np.array([1, a["num_classes"]], np.int32)
    got = var_built["pipe"].logits(idx, y)
    x = R.fhats_to_var_input(R.indices_to_fhats(var_built["vae_sd"], idx, pns), pns)
    want = R.var_forward(var_built["var_sd"], y, x, pns, num_heads=a["num_heads"])
    assert_close_scaled(f"{var_built['name']} pipeline logits", got, want)


# the small architectures only (compiling the sampler for the 10-scale one takes long)
GREEDY_ARCHS = ("no_l2_norm", "pn1248_v512_c16", "shared_aln_mlp2.5")


@pytest.mark.parametrize("var_built", GREEDY_ARCHS, indirect=True)
def test_greedy_cfg_sampling_vs_numpy(var_built):
    """KV-cached, CFG-guided greedy sampling == scale-by-scale teacher-forced float64 reference."""
    from arjax.sample.next_scale import sample_next_scale
    a = var_built["var_arch"]
    labels = np.array([2, a["num_classes"] - 1], np.int32)
    tgd, tst = nnx.split(var_built["tok"])
    mgd, mst = nnx.split(var_built["model"])
    run = jax.jit(lambda ts, ms, y, k: sample_next_scale(nnx.merge(tgd, ts), nnx.merge(mgd, ms), y, k,
                                                         cfg=2.0, top_k=1, top_p=0.0))
    images, tokens, top2 = (np.asarray(t) for t in run(tst, mst, labels, jax.random.split(jax.random.key(1), 2)))
    ref_tok, ref_top2, ref_fhat = R.greedy_cfg_sample(var_built["var_sd"], var_built["vae_sd"], labels,
                                                      a["patch_nums"], cfg=2.0, num_heads=a["num_heads"])
    gap = ref_top2[..., 0] - ref_top2[..., 1]
    assert gap.min() > 1e-3, "reference has a near-tie: pick another seed"
    np.testing.assert_array_equal(tokens, ref_tok)
    assert_close_scaled(f"{var_built['name']} sample top2", top2, ref_top2)
    ref_img = (R.fhat_to_img(var_built["vae_sd"], ref_fhat) + 1) / 2
    assert_close_scaled(f"{var_built['name']} sample image", images, nchw_to_nhwc(ref_img), ATOL_IMG)


# --------------------------------------------------------------------------------------------- tokenizer
def test_vqvae_config_inferred(tok_built):
    t, cfg = tok_built["vae_arch"], tok_built["meta"]["tokenizer"]
    assert cfg["ch"] == t["ch"] and tuple(cfg["ch_mult"]) == tuple(t["ch_mult"])
    assert cfg["num_res_blocks"] == t["num_res_blocks"] and cfg["share_quant_resi"] == t["share_quant_resi"]
    assert cfg["vocab_size"] == t["vocab_size"] and cfg["z_channels"] == t["z_channels"]
    assert cfg["using_sa"] == t.get("using_sa", True) and cfg["using_mid_sa"] == t.get("using_mid_sa", True)
    assert tuple(cfg["patch_nums"]) == tuple(tok_built["var_arch"]["patch_nums"])
    n_phis = len(R.phi_names(tok_built["vae_sd"]))
    assert len(tok_built["tok"].quantize.quant_resi) == n_phis


def _tok_inputs(tok_built, seed=5):
    pns = tok_built["var_arch"]["patch_nums"]
    L = sum(p * p for p in pns)
    idx = np.random.default_rng(seed).integers(0, tok_built["vae_arch"]["vocab_size"], (2, L)).astype(np.int32)
    return pns, idx


def test_vqvae_fhat_and_var_input_vs_numpy(tok_built):
    pns, idx = _tok_inputs(tok_built)
    tok, sd = tok_built["tok"], tok_built["vae_sd"]
    fhats = jit_method(tok, lambda t, i: t.quantize.indices_to_fhat(i, cumulative=True))(idx)
    ref = R.indices_to_fhats(sd, idx, pns)
    assert len(fhats) == len(pns)
    assert_close_scaled(f"{tok_built['name']} f_hat per scale", np.stack([np.asarray(f) for f in fhats]),
                        np.stack([nchw_to_nhwc(r) for r in ref]))
    assert_close_scaled(f"{tok_built['name']} var_input", tok_built["pipe"].tokenizer.var_input(idx),
                        R.fhats_to_var_input(ref, pns))


def test_vqvae_decode_vs_numpy(tok_built):
    pns, idx = _tok_inputs(tok_built, seed=6)
    tok, sd = tok_built["tok"], tok_built["vae_sd"]
    fhat = R.indices_to_fhats(sd, idx, pns)[-1]
    ref_raw = R.decoder(sd, R.conv2d(fhat, sd, "post_quant_conv"))
    # the clamp to [-1, 1] must not hide the comparison: most reference pixels lie inside
    inside = float((np.abs(ref_raw) < 0.99).mean())
    assert inside > 0.5 and np.abs(ref_raw).mean() > 0.05, f"unsuitable decoder output scale ({inside=:.2f})"
    img = tok_built["pipe"].tokenizer.decode(idx)
    assert img.shape == (2, tok.cfg.image_size, tok.cfg.image_size, 3)
    assert_close_scaled(f"{tok_built['name']} decode", img, nchw_to_nhwc(np.clip(ref_raw, -1, 1)), ATOL_IMG)


def test_vqvae_encode_and_quantize_vs_numpy(tok_built):
    tok, sd = tok_built["tok"], tok_built["vae_sd"]
    pns = tok_built["var_arch"]["patch_nums"]
    size = tok.cfg.image_size
    rng = np.random.default_rng(8)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    smooth = np.stack([np.sin(3 * xx + 2 * yy + k) for k in range(3)])[None] * np.array([0.7, 0.5])[:, None, None, None]
    img = np.clip(smooth + rng.normal(0, 0.1, (2, 3, size, size)), -1, 1).astype(np.float32)   # NCHW
    feats = jit_method(tok, lambda t, im: t.features(im))(nchw_to_nhwc(img))
    ref_f = R.img_to_f(sd, img)
    assert_close_scaled(f"{tok_built['name']} features", feats, nchw_to_nhwc(ref_f))
    # quantiser: same float32 input on both sides, indices must agree exactly. Squared distances are
    # O(1) here, so fp32 rounding is ~1e-6: the data must have no near-tie below 1e-5.
    f32 = np.asarray(feats)
    ref_idx, ref_fhats, margin = R.quantize(sd, nhwc_to_nchw(f32), pns)
    assert margin.min() > 1e-5, "reference has a near-tie: pick another seed"
    assert len(np.unique(ref_idx)) > 5, "degenerate quantisation: the test would not be discriminating"

    def run(t, f):
        il, fh = t.quantize.quantize(f)
        return jnp.concatenate(il, axis=1), fh
    idx, fhat = jit_method(tok, run)(f32)
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    assert_close_scaled(f"{tok_built['name']} quantize f_hat", fhat, nchw_to_nhwc(ref_fhats[-1]))
    if tok_built["name"] == "shared_phi_3res":  # the public path once (one more encoder compile)
        np.testing.assert_array_equal(np.asarray(tok_built["pipe"].tokenizer.encode(nchw_to_nhwc(img))), ref_idx)
