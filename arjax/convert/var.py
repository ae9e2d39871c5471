"""Convert the official VAR checkpoints (`vae_ch160v4096z32.pth`, `var_d{16,20,24,30,36}.pth`).

Architecture is inferred from the tensors (depth, width, heads, MLP ratio, shared AdaLN, schedule;
tokenizer ch, ch_mult, res blocks, attention, phi sharing), then every tensor is checked and mapped.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import jax
import numpy as np

from arjax import members
from arjax.convert.state_dict import fill_params, load_state_dict
from arjax.nn.init import abstract_params
from arjax.nn.models.var import VAR, VARConfig
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
from arjax.ops import scales
from arjax.train.checkpoint import check_new_model_dir, save_model

VAE_IGNORE = (r"quantize\.ema_vocab_hit_SV",)
VAR_IGNORE = (r"lvl_1L", r"attn_bias_for_masking", r"blocks\.\d+\.attn\.zero_k_bias")
VAR_RENAMES = ((r"(^|\.)ada_lin\.", r"\1ada_lin.1."), (r"^shared_ada_lin\.", "shared_ada_lin.1."))


def _indices(sd, pattern) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _need(sd, key, what):
    if key not in sd:
        raise ValueError(f"{what}: tensor {key!r} not found; is this the right checkpoint? "
                         f"(first keys: {sorted(sd)[:5]})")
    return sd[key]


def vae_renames(cfg: VQVAEConfig):
    phi = {0: r"quantize.quant_resi.\1.", 1: "quantize.quant_resi.qresi."}.get(
        cfg.share_quant_resi, r"quantize.quant_resi.qresi_ls.\1.")
    return ((r"^encoder\.down\.(\d+)\.resample\.", r"encoder.down.\1.downsample."),
            (r"^decoder\.up\.(\d+)\.resample\.", r"decoder.up.\1.upsample."),
            (r"^quantize\.quant_resi\.(\d+)\.conv\.", phi),
            (r"^quantize\.embedding$", "quantize.embedding.weight"))


def infer_vqvae_config(sd, patch_nums, quant_resi: float = 0.5) -> VQVAEConfig:
    what = "VQVAE checkpoint"
    ch = _need(sd, "encoder.conv_in.weight", what).shape[0]
    levels = _indices(sd, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    if "quantize.quant_resi.qresi.weight" in sd:
        share = 1
    elif ls := _indices(sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\."):
        share = len(ls)
    elif ls := _indices(sd, r"quantize\.quant_resi\.(\d+)\."):
        share = 0
        if len(ls) != len(patch_nums):
            raise ValueError(f"{what}: {len(ls)} unshared phi convs but {len(patch_nums)} scales")
    else:
        share, quant_resi = 1, 0.0
    return VQVAEConfig(
        vocab_size=_need(sd, "quantize.embedding.weight", what).shape[0],
        z_channels=sd["quantize.embedding.weight"].shape[1], ch=ch, ch_mult=ch_mult,
        num_res_blocks=len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.")),
        using_sa=f"encoder.down.{levels[-1]}.attn.0.norm.weight" in sd,
        using_mid_sa="encoder.mid.attn_1.norm.weight" in sd,
        quant_conv_ks=_need(sd, "quant_conv.weight", what).shape[-1],
        quant_resi=quant_resi, share_quant_resi=share, patch_nums=tuple(patch_nums))


def transformer_basics(sd, what: str) -> tuple[int, int, bool]:
    """(width, depth, L2-normalised attention) of a VAR-family transformer state dict."""
    c = _need(sd, "class_emb.weight", what).shape[1]
    depth = len(_indices(sd, r"blocks\.(\d+)\."))
    if depth == 0:
        raise ValueError(f"{what}: no transformer blocks (`blocks.N.*`) found")
    return c, depth, "blocks.0.attn.scale_mul_1H11" in sd


def infer_var_config(sd, patch_nums=None, num_heads=None) -> VARConfig:
    """`num_heads` is read from the per-head scales; only models without L2-normalised attention
    (none released) leave it unrecorded, and then it must be given or defaults to width / 64."""
    what = "VAR checkpoint"
    c, depth, l2 = transformer_basics(sd, what)
    emb = sd["class_emb.weight"]
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else (num_heads or max(c // 64, 1))
    if l2 and num_heads not in (None, heads):
        raise ValueError(f"{what}: num_heads={num_heads} given but the checkpoint has {heads} heads")
    if not l2 and num_heads is None:
        logging.warning("%s has no per-head scales: assuming %d heads (width / 64); pass num_heads "
                        "to override", what, heads)
    if patch_nums is None:
        if "lvl_1L" in sd:
            patch_nums = scales.infer_patch_nums(lvl_counts=np.bincount(np.asarray(sd["lvl_1L"]).reshape(-1)))
        else:
            patch_nums = scales.infer_patch_nums(total_len=_need(sd, "pos_1LC", what).shape[1])
    return VARConfig(
        depth=depth, embed_dim=c, num_heads=heads,
        mlp_ratio=_need(sd, "blocks.0.ffn.fc1.weight", what).shape[0] / c,
        num_classes=emb.shape[0] - 1, vocab_size=_need(sd, "head.weight", what).shape[0],
        cvae=_need(sd, "word_embed.weight", what).shape[1], patch_nums=tuple(patch_nums),
        shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=l2)


def convert_var(vae_path, var_path, out_dir, *, patch_nums=None, quant_resi: float = 0.5,
                num_heads: int | None = None) -> Path:
    """Read both checkpoints, check every tensor, and write an arjax model directory."""
    check_new_model_dir(out_dir)
    var_sd, vae_sd = load_state_dict(var_path), load_state_dict(vae_path)
    if "encoder.conv_in.weight" in var_sd or "class_emb.weight" in vae_sd:
        raise ValueError(f"{var_path} holds a tokenizer (VQVAE) or {vae_path} a transformer: the two files look "
                         f"swapped (--vae takes the VQVAE, --var the VAR transformer)")
    var_cfg = infer_var_config(var_sd, patch_nums, num_heads)
    vae_cfg = infer_vqvae_config(vae_sd, var_cfg.patch_nums, quant_resi)
    if (vae_cfg.vocab_size, vae_cfg.z_channels) != (var_cfg.vocab_size, var_cfg.cvae):
        raise ValueError(f"tokenizer ({vae_path}) has vocab {vae_cfg.vocab_size} x dim {vae_cfg.z_channels} but "
                         f"the transformer ({var_path}) expects {var_cfg.vocab_size} x {var_cfg.cvae}")
    params = {
        "tokenizer": fill_params(abstract_params(MultiScaleVQVAE, vae_cfg), vae_sd,
                                 renames=vae_renames(vae_cfg), ignore=VAE_IGNORE, what=f"VQVAE ({vae_path})"),
        "model": fill_params(abstract_params(VAR, var_cfg), var_sd,
                             renames=VAR_RENAMES, ignore=VAR_IGNORE, what=f"VAR ({var_path})"),
    }
    meta = members.model_meta("var", vae_cfg, var_cfg, source={"vae": str(vae_path), "var": str(var_path)})
    return save_model(out_dir, meta, jax.tree.map(np.asarray, params))


# -- `arjax convert var` (registered by arjax.members.var) ------------------------------------------
HELP = "VAR: vae_ch160v4096z32.pth + var_dNN.pth"


def add_arguments(p) -> None:
    from arjax.cli import int_list
    p.add_argument("--vae", required=True, help="tokenizer checkpoint (.pth or .safetensors)")
    p.add_argument("--var", required=True, help="transformer checkpoint (.pth or .safetensors)")
    p.add_argument("--patch-nums", type=int_list, default=None, help="scale schedule; inferred from the checkpoint "
                   "when omitted")
    p.add_argument("--quant-resi", type=float, default=0.5, help="phi residual ratio (VAR: 0.5)")


def run(args) -> Path:
    return convert_var(args.vae, args.var, args.out, patch_nums=args.patch_nums, quant_resi=args.quant_resi)
