"""The next-scale family on the built-in dataset, on equal footing: VAR, HMAR and FlexVAR share the
quickstart's data, batch, optimiser, step budget and transformer size; only what defines each member
differs. VAR and HMAR train on the quickstart's residual tokenizer, FlexVAR on its own per-scale one.

    arjax train --config configs/family.py:tokenizer      --workdir runs/family/tokenizer
    arjax train --config configs/family.py:flex_tokenizer --workdir runs/family/flex_tokenizer
    arjax train --config configs/family.py:var     --workdir runs/family/var     --set tokenizer_dir=runs/family/tokenizer/model
    arjax train --config configs/family.py:hmar    --workdir runs/family/hmar    --set tokenizer_dir=runs/family/tokenizer/model
    arjax train --config configs/family.py:flexvar --workdir runs/family/flexvar --set tokenizer_dir=runs/family/flex_tokenizer/model
    arjax train --config configs/family.py:vq_tokenizer --workdir runs/family/vq_tokenizer
    arjax train --config configs/family.py:llamagen --workdir runs/family/llamagen --set tokenizer_dir=runs/family/vq_tokenizer/model
    arjax train --config configs/family.py:maskgit  --workdir runs/family/maskgit  --set tokenizer_dir=runs/family/vq_tokenizer/model

then e.g. `arjax sample --checkpoint runs/family/hmar/model --classes 0,1,2 --steps 1,1,1,2,4,8` (HMAR's
masked steps per scale) or `arjax sample --checkpoint runs/family/flexvar/model --classes 0,1,2
--patch-nums 1,2,4,8,12` (FlexVAR at 48 px). `benchmarks/family.py` runs all of it and prints the table.
"""
import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("arjax_config_quickstart_base", Path(__file__).with_name("quickstart.py"))
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)


def flex_tokenizer() -> ml_collections.ConfigDict:
    """FlexVAR's tokenizer at the quickstart tokenizer's size: every scale quantised on its own with an
    l2-normalised codebook, and decoded at every scale's resolution during training."""
    c = quickstart.get_config("tokenizer")
    c.task = "flex_tokenizer"
    t = c.tokenizer
    c.tokenizer = ml_collections.ConfigDict(dict(
        vocab_size=t.vocab_size, z_channels=t.z_channels, enc_channels=t.z_channels, ch=t.ch, ch_mult=t.ch_mult,
        num_res_blocks=t.num_res_blocks, using_sa=t.using_sa, using_mid_sa=t.using_mid_sa, patch_nums=t.patch_nums))
    c.loss.scale_recon = 1.0  # weight of the smaller scales' mean L1 + L2 reconstruction
    return c


def vq_tokenizer() -> ml_collections.ConfigDict:
    """LlamaGen's VQ tokenizer at the same size: FlexVAR's with one scale, the latent grid itself."""
    c = flex_tokenizer()
    c.tokenizer.patch_nums = (c.tokenizer.patch_nums[-1],)
    c.loss.scale_recon = 0.0  # no smaller scales
    return c


def get_config(arg: str = "var") -> ml_collections.ConfigDict:
    if arg == "tokenizer":
        return quickstart.get_config("tokenizer")
    if arg == "flex_tokenizer":
        return flex_tokenizer()
    if arg == "vq_tokenizer":
        return vq_tokenizer()
    c = quickstart.get_config("var")
    c.steps = 3000  # the comparison budget (the quickstart trains its VAR for 7200)
    c.checkpoint.every, c.sample_every = 500, 1000
    c.tokenizer_dir = "runs/family/tokenizer/model"
    c.model.embed_kernel = 1  # every member embeds tokens as its paper does (FlexVAR has no other option)
    if arg == "var":
        return c
    if arg == "hmar":
        c.task = "hmar"
        # the last block and the head are the masked branch's own; the first blocks are shared
        c.model.mask_blocks = 1
        c.model.scale_weights = "uniform"  # or "lognormal" (model.lognormal_mu / lognormal_sigma)
        c.model.lognormal_mu, c.model.lognormal_sigma = -0.5, 0.5
        c.loss.mask_weight = 1.0
        c.sample.steps = ()  # masked steps per scale; () = one each (pure next-scale)
        return c
    if arg == "flexvar":
        c.task = "flexvar"
        c.tokenizer_dir = "runs/family/flex_tokenizer/model"
        c.model.pos_grid = 16  # twice the training latent's side: room to sample larger
        c.model.max_pn = 8
        # each step trains one of these schedules: the full one and random sub-schedules of it
        c.flex = ml_collections.ConfigDict(dict(num_schedules=4, min_scales=4))
        c.sample.cfg_style = "var"
        return c
    if arg == "llamagen":
        c.task = "llamagen"
        c.tokenizer_dir = "runs/family/vq_tokenizer/model"
        m = c.model  # the same width, depth and heads as the next-scale members
        c.model = ml_collections.ConfigDict(dict(
            dim=m.embed_dim, n_layer=m.depth, n_head=m.num_heads, n_kv_head=None, multiple_of=32,
            ffn_dim_multiplier=None, rope_base=10000.0, norm_eps=1e-5, num_classes=m.num_classes, cls_token_num=1,
            class_dropout_prob=c.loss.class_dropout, attn_impl="auto", dtype="float32", remat=False))
        c.sample.update(cfg_interval=-1, temperature=1.0)
        return c
    if arg == "maskgit":
        c.task = "maskgit"
        c.tokenizer_dir = "runs/family/vq_tokenizer/model"  # LlamaGen's one-scale VQ tokenizer
        m = c.model  # the same width, depth and heads as the others; LlamaGen's layers, bidirectional
        c.model = ml_collections.ConfigDict(dict(
            dim=m.embed_dim, n_layer=m.depth, n_head=m.num_heads, n_kv_head=None, multiple_of=32,
            ffn_dim_multiplier=None, rope_base=10000.0, norm_eps=1e-5, num_classes=m.num_classes, attn_impl="auto",
            dtype="float32", remat=False))
        c.sample.update(iterations=8, choice_temperature=4.5, temperature=1.0)
        return c
    raise ValueError(f"unknown family stage {arg!r}: use tokenizer, flex_tokenizer, vq_tokenizer, var, hmar, "
                     f"flexvar, llamagen or maskgit")
