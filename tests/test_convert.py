"""Conversion (.pth and .safetensors), inferred configs, save/load round trip, sampler determinism."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

import arjax
from arjax.convert.state_dict import load_state_dict
from arjax.convert.var import convert_var, infer_var_config, infer_vqvae_config
from arjax.nn.models.var import VARConfig
from arjax.nn.tokenizers.msvq import VQVAEConfig
from arjax.ops import scales
from arjax.train import checkpoint


def pipe_params(pipe) -> dict:
    """Every nnx.Param of a pipeline as a flat {keystr path, e.g. "['model']['head']['bias']": ndarray} dict."""
    trees = {"tokenizer": nnx.to_pure_dict(nnx.state(pipe.tokenizer.module, nnx.Param)),
             "model": nnx.to_pure_dict(nnx.state(nnx.merge(pipe.graphdef, pipe.state), nnx.Param))}
    flat = jax.tree_util.tree_flatten_with_path(trees)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def assert_same_params(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def ref_params(var_tiny_pipe):
    return pipe_params(var_tiny_pipe)


@pytest.fixture(scope="module")
def converted_params(var_tiny_pipe):
    """Reads a converted model directory's params/ (flattened like pipe_params), without re-tracing
    the modules: the abstract tree is taken from the fixture pipeline."""
    abstract = {"tokenizer": nnx.to_pure_dict(nnx.state(var_tiny_pipe.tokenizer.module, nnx.Param)),
                "model": nnx.to_pure_dict(nnx.state(nnx.merge(var_tiny_pipe.graphdef, var_tiny_pipe.state),
                                                    nnx.Param))}

    def read(directory) -> dict:
        meta = json.loads((directory / "arjax.json").read_text())
        assert VARConfig(**meta["model"]) == var_tiny_pipe.cfg
        assert VQVAEConfig(**meta["tokenizer"]) == var_tiny_pipe.tokenizer.cfg
        flat = jax.tree_util.tree_flatten_with_path(checkpoint.load_params(directory, abstract))[0]
        return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}

    return read


# -- (a) .pth checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "wrapped", "prefixed"])
def test_pth_matches_safetensors(var_tiny_files, ref_params, converted_params, tmp_path, layout):
    torch = pytest.importorskip("torch", reason="reading .pth checkpoints needs torch")
    from safetensors.numpy import load_file
    paths = {}
    for name in ("vae", "var"):
        ref = load_file(str(var_tiny_files / f"{name}.safetensors"))
        sd = {k: torch.from_numpy(np.array(v)) for k, v in ref.items()}
        if layout == "prefixed":
            sd = {f"module.{k}": v for k, v in sd.items()}
        if layout == "wrapped":  # the released VAR checkpoints are plain; trainers save {"model": sd}
            sd = {"model": sd}
        paths[name] = tmp_path / f"{name}.pth"
        torch.save(sd, paths[name])
        # the state dict reader alone: same keys, same values as the .safetensors file
        got = load_state_dict(paths[name])
        assert sorted(got) == sorted(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    out = convert_var(paths["vae"], paths["var"], tmp_path / "model")
    assert_same_params(converted_params(out), ref_params)


def test_pth_and_safetensors_mixed(var_tiny_files, ref_params, converted_params, tmp_path):
    torch = pytest.importorskip("torch", reason="reading .pth checkpoints needs torch")
    from safetensors.numpy import load_file
    sd = load_file(str(var_tiny_files / "var.safetensors"))
    torch.save({"module." + k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "var_d2.pth")
    out = convert_var(var_tiny_files / "vae.safetensors", tmp_path / "var_d2.pth", tmp_path / "model")
    assert_same_params(converted_params(out), ref_params)


# -- (b) inferred configs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_config(var_tiny_files):
    return json.loads((var_tiny_files / "config.json").read_text())


def test_inferred_configs(var_tiny_files, reference_config):
    from safetensors.numpy import load_file
    c = reference_config
    var_kw, vq_kw, dd, bk = c["var_kwargs"], c["vqvae_kwargs"], c["vqvae_ddconfig"], c["build_vae_var_kwargs"]
    var_cfg = infer_var_config(load_file(str(var_tiny_files / "var.safetensors")))
    assert var_cfg.depth == var_kw["depth"]
    assert var_cfg.embed_dim == var_kw["embed_dim"]
    assert var_cfg.num_heads == var_kw["num_heads"]
    assert var_cfg.mlp_ratio == var_kw["mlp_ratio"]
    assert var_cfg.num_classes == var_kw["num_classes"]
    assert var_cfg.shared_aln == var_kw["shared_aln"]
    assert var_cfg.attn_l2_norm == var_kw["attn_l2_norm"]
    assert var_cfg.norm_eps == var_kw["norm_eps"]
    assert var_cfg.patch_nums == tuple(var_kw["patch_nums"]) == tuple(c["patch_nums"])
    assert var_cfg.seq_len == c["L"]
    assert var_cfg.vocab_size == bk["V"] and var_cfg.cvae == bk["Cvae"]

    vq_cfg = infer_vqvae_config(load_file(str(var_tiny_files / "vae.safetensors")), var_cfg.patch_nums)
    assert vq_cfg.ch == dd["ch"] == vq_kw["ch"]
    assert vq_cfg.ch_mult == tuple(dd["ch_mult"])
    assert vq_cfg.num_res_blocks == dd["num_res_blocks"]
    assert vq_cfg.using_sa == dd["using_sa"] and vq_cfg.using_mid_sa == dd["using_mid_sa"]
    assert vq_cfg.z_channels == dd["z_channels"] == vq_kw["z_channels"] == bk["Cvae"]
    assert vq_cfg.vocab_size == vq_kw["vocab_size"] == bk["V"]
    assert vq_cfg.share_quant_resi == vq_kw["share_quant_resi"]
    assert vq_cfg.quant_resi == vq_kw["quant_resi"]
    assert vq_cfg.quant_conv_ks == vq_kw["quant_conv_ks"]
    assert vq_cfg.patch_nums == tuple(vq_kw["v_patch_nums"])
    assert vq_cfg.downsample == dd["downsample"]
    n = len(vq_cfg.patch_nums)
    assert [scales.phi_index(k, n, vq_cfg.num_phis) for k in range(n)] == c["phi_idx_per_scale"]


def test_model_dir_meta(var_tiny_dir, var_tiny_pipe, reference_config):
    meta = json.loads((var_tiny_dir / "arjax.json").read_text())
    assert meta["family"] == "var"
    assert VARConfig(**meta["model"]) == var_tiny_pipe.cfg
    assert VQVAEConfig(**meta["tokenizer"]) == var_tiny_pipe.tokenizer.cfg
    assert meta["model"]["depth"] == reference_config["var_kwargs"]["depth"]
    assert meta["tokenizer"]["ch_mult"] == reference_config["vqvae_ddconfig"]["ch_mult"]
    n_var = sum(v.size for k, v in pipe_params(var_tiny_pipe).items() if k.startswith("['model']"))
    n_vae = sum(v.size for k, v in pipe_params(var_tiny_pipe).items() if k.startswith("['tokenizer']"))
    # torch counts parameters only (buffers such as lvl_1L or ema_vocab_hit_SV are not parameters)
    assert n_var == reference_config["param_counts"]["var"]
    assert n_vae == reference_config["param_counts"]["vae"]


# -- (c) save / load round trip -------------------------------------------------------------------
def test_save_load_round_trip(var_tiny_pipe, var_cases, ref_params, tmp_path):
    out = arjax.save(var_tiny_pipe, tmp_path / "copy", note="round trip")
    pipe2 = arjax.load(out)
    assert pipe2.cfg == var_tiny_pipe.cfg and pipe2.tokenizer.cfg == var_tiny_pipe.tokenizer.cfg
    assert pipe2.meta["note"] == "round trip"
    assert_same_params(pipe_params(pipe2), ref_params)
    idx, labels = var_cases["gt_idx"], var_cases["labels"]
    np.testing.assert_array_equal(np.asarray(pipe2.logits(idx, labels)), np.asarray(var_tiny_pipe.logits(idx, labels)))
    with pytest.raises(FileExistsError, match="already exists"):
        arjax.save(var_tiny_pipe, out)


# -- (d) sampler determinism on a freshly built tiny pipeline --------------------------------------
TINY_META = {
    "family": "var",
    # GroupNorm has 32 groups, so ch must be a multiple of 32; ch_mult (1, 1) downsamples 2x: 8x8 images.
    # No self-attention in the tokenizer: the sampler (tokenizer decoder included) compiles in a few seconds.
    "tokenizer": {"vocab_size": 64, "z_channels": 8, "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
                  "using_sa": False, "using_mid_sa": False, "patch_nums": [1, 2, 4]},
    "model": {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_nums": [1, 2, 4], "vocab_size": 64,
              "cvae": 8, "num_classes": 10},
}
SAMPLE_KW = dict(cfg=1.5, top_k=32, top_p=0.95)


@pytest.fixture(scope="module")
def tiny_pipe():
    return arjax.build(TINY_META, seed=0)


@pytest.fixture(scope="module")
def tiny_samples(tiny_pipe):
    labels = np.array([0, 3, 3, 9, 10])  # 10 = unconditional
    return labels, tiny_pipe.sample(labels, seed=7, return_tokens=True, **SAMPLE_KW)


def test_tiny_build_shapes(tiny_pipe, tiny_samples):
    labels, (images, tokens) = tiny_samples
    assert tiny_pipe.tokenizer.cfg.image_size == 8
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.float32
    assert tokens.shape == (5, 1 + 4 + 16) and tokens.dtype == np.int32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 64
    # decoding the sampled tokens reproduces the sampled images (mapped back from [0, 1])
    np.testing.assert_allclose(np.asarray(tiny_pipe.tokenizer.decode(tokens)), 2 * np.asarray(images) - 1,
                               atol=1e-5)


def test_sample_same_seed_same_tokens(tiny_pipe, tiny_samples):
    labels, (images, tokens) = tiny_samples
    images2, tokens2 = tiny_pipe.sample(labels, seed=7, return_tokens=True, **SAMPLE_KW)
    np.testing.assert_array_equal(np.asarray(tokens2), np.asarray(tokens))
    np.testing.assert_array_equal(np.asarray(images2), np.asarray(images))


def test_sample_other_seed_other_tokens(tiny_pipe, tiny_samples):
    labels, (_, tokens) = tiny_samples
    _, tokens2 = tiny_pipe.sample(labels, seed=8, return_tokens=True, **SAMPLE_KW)
    tokens, tokens2 = np.asarray(tokens), np.asarray(tokens2)
    assert all(not np.array_equal(a, b) for a, b in zip(tokens, tokens2))
    # per-sample keys: the two rows with the same label differ too
    assert not np.array_equal(tokens[1], tokens[2])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sample_independent_of_batch_size(tiny_pipe, tiny_samples, batch_size):
    labels, (images, tokens) = tiny_samples
    images2, tokens2 = tiny_pipe.sample(labels, seed=7, return_tokens=True, batch_size=batch_size, **SAMPLE_KW)
    np.testing.assert_array_equal(np.asarray(tokens2), np.asarray(tokens))
    np.testing.assert_allclose(np.asarray(images2), np.asarray(images), atol=1e-5)


def test_sample_prefix_of_batch(tiny_pipe, tiny_samples):
    """Sample i depends only on (seed, i, label i): the first two of a batch equal a batch of two."""
    labels, (_, tokens) = tiny_samples
    _, tokens2 = tiny_pipe.sample(labels[:2], seed=7, return_tokens=True, **SAMPLE_KW)
    np.testing.assert_array_equal(np.asarray(tokens2), np.asarray(tokens)[:2])
