"""Convert the official FlexVAR checkpoints (`FlexVAE.pth` + `FlexVAR_d{16,20,24}.pth`, or .safetensors).

The tokenizer is LlamaGen's VQ-16: its encoder/decoder map onto arjax's VQGAN blocks by renaming
(`conv_blocks.{i}.res.{j}` -> `down[i].block[j]`, decoder levels in reverse order, `mid.{0,1,2}` ->
`mid.block_1/attn_1/block_2`), and the separate q, k, v 1x1 convs of each attention block are
concatenated into one `qkv` conv. The transformer maps onto VAR's blocks; its position grid is
copied as is (channel-first). Architecture is inferred from the tensor shapes.
"""
from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from arjax import members
from arjax.convert.state_dict import fill_params, load_state_dict
from arjax.convert.var import VAR_RENAMES, _indices, _need, transformer_basics
from arjax.nn.init import abstract_module, abstract_params
from arjax.nn.models.flexvar import FlexVAR, FlexVARConfig
from arjax.nn.tokenizers.flexvq import FLEXVAR_SCHEDULE, FlexVQConfig, FlexVQVAE
from arjax.train.checkpoint import check_new_model_dir, save_model

VAE_IGNORE = (r"quantize\.codebook_used",)
VAR_IGNORE = (r"attn_bias_for_masking", r"blocks\.\d+\.attn\.zero_k_bias")
QKV = "{q,k,v}"  # name of the merged attention conv in the state dict: errors then name all three


def merge_qkv(sd: dict) -> dict:
    """Concatenate every attention block's q, k, v 1x1 convs (out channels [q; k; v]) into one tensor."""
    sd = dict(sd)
    for key in [k for k in sd if re.fullmatch(r".*\.q\.(weight|bias)", k)]:
        prefix, _, leaf = key.rpartition(".q.")
        parts = []
        for p in "qkv":
            name = f"{prefix}.{p}.{leaf}"
            if name not in sd:
                raise ValueError(f"tokenizer state dict: tensor {name!r} is missing (its block has {key!r})")
            if sd[name].shape != sd[key].shape:
                raise ValueError(f"tokenizer state dict: tensor {name!r} has shape {sd[name].shape} but "
                                 f"{key!r} has {sd[key].shape}")
            parts.append(sd[name])
        for p in "qkv":
            del sd[f"{prefix}.{p}.{leaf}"]
        sd[f"{prefix}.{QKV}.{leaf}"] = np.concatenate(parts, axis=0)
    return sd


def vae_renames(cfg: FlexVQConfig):
    """arjax path -> LlamaGen VQ-16 key."""
    last = len(cfg.ch_mult) - 1
    dec_kind = {"block": "res", "attn": "attn", "resample": "upsample"}
    return ((r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res."),
            (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.conv_blocks.\1.attn."),
            (r"^encoder\.down\.(\d+)\.resample\.", r"encoder.conv_blocks.\1.downsample."),
            (r"^decoder\.up\.(\d+)\.(block|attn|resample)\.",
             lambda m: f"decoder.conv_blocks.{last - int(m.group(1))}.{dec_kind[m.group(2)]}."),
            (r"\.mid\.block_1\.", ".mid.0."),
            (r"\.mid\.attn_1\.", ".mid.1."),
            (r"\.mid\.block_2\.", ".mid.2." if cfg.using_mid_sa else ".mid.1."),
            (r"\.qkv\.", f".{QKV}."),
            (r"^quantize\.embedding$", "quantize.embedding.weight"))


def infer_flexvq_config(sd, patch_nums=None) -> FlexVQConfig:
    what = "FlexVAR tokenizer (VQ-16) checkpoint"
    ch = _need(sd, "encoder.conv_in.weight", what).shape[0]
    levels = _indices(sd, r"encoder\.conv_blocks\.(\d+)\.")
    if not levels:
        raise ValueError(f"{what}: no encoder levels (`encoder.conv_blocks.N.*`) found")
    ch_mult = tuple(_need(sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight", what).shape[0] // ch for i in levels)
    codebook = _need(sd, "quantize.embedding.weight", what)
    return FlexVQConfig(
        vocab_size=codebook.shape[0], z_channels=codebook.shape[1],
        enc_channels=_need(sd, "encoder.conv_out.weight", what).shape[0], ch=ch, ch_mult=ch_mult,
        num_res_blocks=len(_indices(sd, r"encoder\.conv_blocks\.0\.res\.(\d+)\.")),
        using_sa=any(k.startswith(f"encoder.conv_blocks.{levels[-1]}.attn.") for k in sd),
        using_mid_sa=any(k.startswith("encoder.mid.1.q.") for k in sd),
        patch_nums=tuple(patch_nums or FLEXVAR_SCHEDULE))


def infer_flexvar_config(sd, patch_nums=None, max_pn: int = 16) -> FlexVARConfig:
    what = "FlexVAR transformer checkpoint"
    c, depth, l2 = transformer_basics(sd, what)
    emb = sd["class_emb.weight"]
    if not l2:  # every released FlexVAR uses it; without it the head count is not recorded
        raise ValueError(f"{what}: 'blocks.0.attn.scale_mul_1H11' not found (attn_l2_norm=False is unsupported)")
    grid = _need(sd, "pos_1LC", what)
    if grid.ndim != 4 or grid.shape[0] != 1 or grid.shape[1] != c or grid.shape[2] != grid.shape[3]:
        raise ValueError(f"{what}: tensor 'pos_1LC' has shape {grid.shape}; expected (1, {c}, G, G)")
    pns = tuple(patch_nums or FLEXVAR_SCHEDULE)
    first_l = _need(sd, "pos_start", what).shape[1]
    if pns[0] ** 2 != first_l:
        raise ValueError(f"{what}: tensor 'pos_start' holds {first_l} first-scale tokens but the schedule "
                         f"{pns} starts with {pns[0] ** 2}")
    return FlexVARConfig(
        depth=depth, embed_dim=c, num_heads=sd["blocks.0.attn.scale_mul_1H11"].shape[1],
        mlp_ratio=_need(sd, "blocks.0.ffn.fc1.weight", what).shape[0] / c,
        num_classes=emb.shape[0] - 1, vocab_size=_need(sd, "head.weight", what).shape[0],
        cvae=_need(sd, "word_embed.weight", what).shape[1], patch_nums=pns,
        shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=True, pos_grid=grid.shape[-1], max_pn=max_pn)


def flexvar_params(vae_sd: dict, var_sd: dict, *, patch_nums=None, max_pn: int = 16, names=("vae", "var")):
    """State dicts -> (tokenizer config, model config, {"tokenizer": ..., "model": ...} numpy params)."""
    if "encoder.conv_in.weight" in var_sd or "class_emb.weight" in vae_sd:
        raise ValueError(f"{names[1]} holds a tokenizer or {names[0]} a transformer: the two files look swapped "
                         f"(--vae takes the VQ tokenizer, --var the FlexVAR transformer)")
    model_cfg = infer_flexvar_config(var_sd, patch_nums, max_pn)
    tok_cfg = infer_flexvq_config(vae_sd, model_cfg.patch_nums)
    if (tok_cfg.vocab_size, tok_cfg.z_channels) != (model_cfg.vocab_size, model_cfg.cvae):
        raise ValueError(f"tokenizer ({names[0]}) has vocab {tok_cfg.vocab_size} x dim {tok_cfg.z_channels} but "
                         f"the transformer ({names[1]}) expects {model_cfg.vocab_size} x {model_cfg.cvae}")
    params = {
        "tokenizer": fill_params(abstract_params(FlexVQVAE, tok_cfg), merge_qkv(vae_sd), renames=vae_renames(tok_cfg),
                                 ignore=VAE_IGNORE, what=f"FlexVAR tokenizer ({names[0]})"),
        "model": fill_params(abstract_params(FlexVAR, model_cfg), var_sd, renames=VAR_RENAMES,
                             ignore=VAR_IGNORE, what=f"FlexVAR transformer ({names[1]})"),
    }
    return tok_cfg, model_cfg, jax.tree.map(np.asarray, params)


def _filled(cls, cfg, params):
    module = abstract_module(cls, cfg)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
    nnx.update(module, state)
    return module


def load_flexvar(vae_path, var_path, *, patch_nums=None, max_pn: int = 16):
    """Read both checkpoints and return the converted (FlexVQVAE, FlexVAR) modules in memory."""
    tok_cfg, model_cfg, params = flexvar_params(load_state_dict(vae_path), load_state_dict(var_path),
                                                patch_nums=patch_nums, max_pn=max_pn,
                                                names=(str(vae_path), str(var_path)))
    return _filled(FlexVQVAE, tok_cfg, params["tokenizer"]), _filled(FlexVAR, model_cfg, params["model"])


def convert_flexvar(vae_path, var_path, out_dir, *, patch_nums=None, max_pn: int = 16) -> Path:
    """Read both checkpoints, check every tensor, and write an arjax model directory."""
    check_new_model_dir(out_dir)
    tok_cfg, model_cfg, params = flexvar_params(load_state_dict(vae_path), load_state_dict(var_path),
                                                patch_nums=patch_nums, max_pn=max_pn,
                                                names=(str(vae_path), str(var_path)))
    meta = members.model_meta("flexvar", tok_cfg, model_cfg, source={
        "vae": str(vae_path), "var": str(var_path), "reference": "github.com/jiaosiyu1999/FlexVAR"})
    return save_model(out_dir, meta, params)


# -- `arjax convert flexvar` (registered by arjax.members.flexvar) ----------------------------------
HELP = "FlexVAR: FlexVAE.pth + FlexVAR transformer checkpoint"


def add_arguments(p) -> None:
    p.add_argument("--vae", required=True, help="tokenizer checkpoint (.pth or .safetensors)")
    p.add_argument("--var", required=True, help="transformer checkpoint (.pth or .safetensors)")


def run(args) -> Path:
    return convert_flexvar(args.vae, args.var, args.out)
