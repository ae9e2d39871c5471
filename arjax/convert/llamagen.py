"""Convert the official LlamaGen class-conditional checkpoints (`vq_ds16_c2i.pt` + `c2i_{B,L,XL,XXL,3B}_*.pt`,
or .safetensors).

The tokenizer is FlexVAR's (LlamaGen's VQ) with the single-scale schedule (image_size // 16,), converted
by arjax.convert.flexvar. The GPT's module names mirror the PyTorch keys, so its tensors map by the
generic rules alone. The GPT architecture is inferred from the tensors except the head count, which
no tensor records: it comes from the released sizes' table by width, or must be given.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from arjax import members
from arjax.convert.flexvar import VAE_IGNORE, _filled, infer_flexvq_config, merge_qkv, vae_renames
from arjax.convert.state_dict import fill_params, load_state_dict
from arjax.convert.var import _indices, _need
from arjax.nn.init import abstract_params
from arjax.nn.models.llamagen import PRESETS, LlamaGen, LlamaGenConfig
from arjax.nn.tokenizers.flexvq import FlexVQConfig, FlexVQVAE
from arjax.train.checkpoint import check_new_model_dir, save_model

GPT_IGNORE = (r"freqs_cis",)   # a derived table, registered as a buffer by the reference


def convert_gpt(sd: dict, *, n_head: int | None = None, block_size: int = 256,
                what: str = "LlamaGen GPT") -> tuple[LlamaGenConfig, dict]:
    """GPT state dict -> (config, pure-dict numpy params). `n_head=None` takes the released size of
    this width (see PRESETS); `block_size` is the number of image tokens ((image_size / 16) ** 2)."""
    emb = _need(sd, "cls_embedding.embedding_table.weight", what)
    dim = emb.shape[1]
    n_layer = len(_indices(sd, r"layers\.(\d+)\."))
    if n_layer == 0:
        raise ValueError(f"{what}: no transformer layers (`layers.N.*`) found")
    if n_head is None:
        heads = {p["dim"]: p["n_head"] for p in PRESETS.values()}
        if dim not in heads:
            raise ValueError(f"{what}: width {dim} is none of the released sizes ({sorted(heads)}), and the head "
                             f"count is not stored in the checkpoint: pass n_head")
        n_head = heads[dim]
    if dim % n_head:
        raise ValueError(f"{what}: width {dim} is not divisible by n_head={n_head}")
    hd = dim // n_head
    qkv_rows = _need(sd, "layers.0.attention.wqkv.weight", what).shape[0]
    n_kv = (qkv_rows // hd - n_head) // 2
    if qkv_rows % hd or n_kv <= 0 or (n_head + 2 * n_kv) * hd != qkv_rows:
        raise ValueError(f"{what}: tensor 'layers.0.attention.wqkv.weight' has {qkv_rows} rows, not "
                         f"(n_head + 2 n_kv_head) * {hd} for n_head={n_head}")
    cfg = LlamaGenConfig(dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv,
                         vocab_size=_need(sd, "tok_embeddings.weight", what).shape[0],
                         num_classes=emb.shape[0] - 1, block_size=block_size)  # last row: the null class
    hidden = _need(sd, "layers.0.feed_forward.w1.weight", what).shape[0]
    if hidden != cfg.ffn_hidden:
        raise ValueError(f"{what}: tensor 'layers.0.feed_forward.w1.weight' has {hidden} rows but width {dim} "
                         f"gives an FFN of {cfg.ffn_hidden} (multiple_of=256, ffn_dim_multiplier=None)")
    params = fill_params(abstract_params(LlamaGen, cfg), sd, ignore=GPT_IGNORE, what=what)
    return cfg, jax.tree.map(np.asarray, params)


def convert_vq(sd: dict, image_size: int = 256, *, what: str = "LlamaGen VQ tokenizer") -> tuple[FlexVQConfig, dict]:
    """VQ state dict -> (FlexVQConfig with the one scale image_size // downsample, numpy params)."""
    cfg = infer_flexvq_config(sd, (1,))
    ds = 2 ** (len(cfg.ch_mult) - 1)
    if image_size % ds:
        raise ValueError(f"{what}: image_size {image_size} is not a multiple of the tokenizer's downsampling {ds}")
    cfg = dataclasses.replace(cfg, patch_nums=(image_size // ds,))
    params = fill_params(abstract_params(FlexVQVAE, cfg), merge_qkv(sd), renames=vae_renames(cfg),
                         ignore=VAE_IGNORE, what=what)
    return cfg, jax.tree.map(np.asarray, params)


def llamagen_params(vq_sd: dict, gpt_sd: dict, *, image_size: int = 256, n_head: int | None = None,
                    names=("vq", "gpt")):
    """State dicts -> (tokenizer config, GPT config, {"tokenizer": ..., "model": ...} numpy params)."""
    if "encoder.conv_in.weight" in gpt_sd or "tok_embeddings.weight" in vq_sd:
        raise ValueError(f"{names[1]} holds a tokenizer or {names[0]} a GPT: the two files look swapped "
                         f"(--vq takes the VQ tokenizer, --gpt the LlamaGen GPT)")
    tok_cfg, tok = convert_vq(vq_sd, image_size, what=f"LlamaGen VQ tokenizer ({names[0]})")
    cfg, gpt = convert_gpt(gpt_sd, n_head=n_head, block_size=tok_cfg.patch_nums[0] ** 2,
                           what=f"LlamaGen GPT ({names[1]})")
    if tok_cfg.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer ({names[0]}) has {tok_cfg.vocab_size} codes but the GPT ({names[1]}) "
                         f"predicts {cfg.vocab_size}")
    return tok_cfg, cfg, {"tokenizer": tok, "model": gpt}


def load_llamagen(vq_path, gpt_path, *, image_size: int = 256, n_head: int | None = None):
    """Read both checkpoints and return the converted (FlexVQVAE, LlamaGen) modules in memory."""
    tok_cfg, cfg, params = llamagen_params(load_state_dict(vq_path), load_state_dict(gpt_path),
                                           image_size=image_size, n_head=n_head, names=(str(vq_path), str(gpt_path)))
    return _filled(FlexVQVAE, tok_cfg, params["tokenizer"]), _filled(LlamaGen, cfg, params["model"])


def convert(vq_path, gpt_path, out_dir, *, image_size: int = 256, n_head: int | None = None) -> Path:
    """Read both checkpoints, check every tensor, and write an arjax model directory."""
    check_new_model_dir(out_dir)
    tok_cfg, cfg, params = llamagen_params(load_state_dict(vq_path), load_state_dict(gpt_path),
                                           image_size=image_size, n_head=n_head, names=(str(vq_path), str(gpt_path)))
    meta = members.model_meta("llamagen", tok_cfg, cfg, source={
        "vq": str(vq_path), "gpt": str(gpt_path), "reference": "github.com/FoundationVision/LlamaGen"})
    return save_model(out_dir, meta, params)


# -- `arjax convert llamagen` (registered by arjax.members.llamagen) --------------------------------
HELP = "LlamaGen: vq_ds16_c2i.pt + c2i_{B,L,XL,XXL,3B}_{256,384}.pt"


def add_arguments(p) -> None:
    p.add_argument("--vq", required=True, help="VQ-16 tokenizer checkpoint (.pt or .safetensors)")
    p.add_argument("--gpt", required=True, help="class-conditional GPT checkpoint (.pt or .safetensors)")
    p.add_argument("--image-size", type=int, default=256, help="256 or 384 (the GPT's training resolution)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads; the released size's when omitted")


def run(args) -> Path:
    return convert(args.vq, args.gpt, args.out, image_size=args.image_size, n_head=args.n_head)
