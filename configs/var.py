"""VAR model configs (tokenizer + transformer) by size.

    arjax init --config configs/var.py:tiny --out runs/var_tiny      # random init, laptop size
    arjax init --config configs/var.py:d16 --out runs/var_d16         # ImageNet 256 VAR-d16 shapes

Sizes follow VAR's depth rule (width 64*depth, heads = depth); d36 is the 512px shared-AdaLN model.
Override any key: `--set model.depth=4` (vocab, code dim and schedule are shared through references
to the tokenizer's keys).
"""
import ml_collections

SCHEDULES = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}


def get_config(arg: str = "d16") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.task = "var"  # the member, as in the training configs
    tiny = arg == "tiny"
    depth = 2 if tiny else int(arg.lstrip("d"))
    image_size = 512 if depth == 36 else 256
    pns = (1, 2, 3, 4, 6, 8) if tiny else SCHEDULES[image_size]  # tiny: 64px images, 8x8 latent
    cfg.tokenizer = ml_collections.ConfigDict(dict(
        vocab_size=512 if tiny else 4096, z_channels=16 if tiny else 32, ch=32 if tiny else 160,
        ch_mult=(1, 1, 2, 2) if tiny else (1, 1, 2, 2, 4), num_res_blocks=1 if tiny else 2,
        using_sa=True, using_mid_sa=True, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4,
        patch_nums=pns))
    cfg.model = ml_collections.ConfigDict(dict(
        depth=depth, embed_dim=128 if tiny else 64 * depth, num_heads=2 if tiny else depth, mlp_ratio=4.0,
        num_classes=10 if tiny else 1000, vocab_size=cfg.tokenizer.get_ref("vocab_size"),
        cvae=cfg.tokenizer.get_ref("z_channels"), patch_nums=cfg.tokenizer.get_ref("patch_nums"), norm_eps=1e-6, shared_aln=depth == 36, attn_l2_norm=True,
        init_adaln=0.5, init_adaln_gamma=5e-6 if depth == 36 else 1e-5, init_head=0.02,
        attn_impl="auto", dtype="float32"))
    return cfg
