"""The CPU quickstart on the built-in synthetic dataset (10 shape x colour classes, 32 px):
a small multi-scale tokenizer, then a small VAR on its tokens.

    arjax train --config configs/quickstart.py:tokenizer --workdir runs/quickstart/tokenizer
    arjax train --config configs/quickstart.py:var --workdir runs/quickstart/var \
        --set tokenizer_dir=runs/quickstart/tokenizer/model

`arjax quickstart` runs both and then samples and evaluates. Override any key with --set key=value.
"""
import ml_collections


def common(task: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.batch_size = 32
    c.steps = 1000
    c.log_every = 10
    c.sample_every = 250
    c.ema_decay = 0.0
    c.show_metrics = ("loss",)
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", augment=False, cache_tokens=False,
        # cache_views (with cache_tokens): K > 1 caches K augmented encodings (random crop + flip) per image
        # and each epoch reads one, keeping the augmentation; 1 = one un-augmented encoding per image
        cache_views=1,
        kwargs=ml_collections.ConfigDict(dict(num_examples=50_000, seed=0))))  # images at the model's size
    c.optim = ml_collections.ConfigDict(dict(
        base_lr=8e-3, warmup_steps=50, wp0=0.005, wpe=0.01, schedule="lin0", weight_decay=0.05,
        weight_decay_end=0.0, b1=0.9, b2=0.95, grad_clip=2.0))  # weight_decay_end 0: constant (cosine otherwise)
    c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=2))
    # device mesh (arjax.parallel): batch over data x fsdp, FSDP-sharded state; -1 = remaining devices
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # gradient accumulation: each step runs the batch as this many microbatches (same global batch, less
    # activation memory); AR models only
    c.accum_steps = 1
    c.sample = ml_collections.ConfigDict(dict(cfg=1.5, top_k=900, top_p=0.96, preview_classes=10,
                                              preview_per_class=4))
    return c


def get_config(arg: str = "var") -> ml_collections.ConfigDict:
    if arg == "tokenizer":
        c = common("tokenizer")
        c.steps, c.batch_size = 600, 16
        c.optim.base_lr = 16e-3  # peak 1e-3 at batch 16
        c.show_metrics = ("loss", "psnr", "usage")
        # 64 codes, not 512: same PSNR (21.7 dB at 600 steps), and the VAR on them scored the same class
        # accuracy with half the Frechet distance (29-33 vs 47-58) and 8% faster steps (measured 2026-11-24)
        c.tokenizer = ml_collections.ConfigDict(dict(
            vocab_size=64, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, using_sa=False,
            using_mid_sa=True, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, patch_nums=(1, 2, 3, 4, 6, 8)))
        c.loss = ml_collections.ConfigDict(dict(
            beta=0.25, l1=1.0, l2=1.0, use_decay=0.99, dead_threshold=0.03, reset_every=50,
            perceptual=0.0, lpips_vgg="", lpips_lin=""))  # LPIPS needs VGG weights: see arjax/nn/lpips.py
        c.disc = ml_collections.ConfigDict(dict(  # PatchGAN; weight 0 = off (shapes need no GAN)
            weight=0.0, start=0, loss="hinge", ch=32, num_layers=2, lr=1e-4, b1=0.5, b2=0.9, grad_clip=0.0))
        return c
    if arg == "var":
        c = common("var")
        # Sized for ~10 min on 2 CPU cores. At that budget a small model for many steps did best
        # (measured 2026-11-24: d3/w128 x 1500 steps 85-89% class accuracy, d4/w256 x 450 steps 76-79%).
        # At a fixed CPU budget, small batches win: batch 8 x 7200 steps scored 86% where batch 32 x 1800
        # scored 79% and batch 16 x 3600 82% (same tokenizer, same compute; measured 2026-11-24).
        c.batch_size, c.steps = 8, 7200
        c.optim.base_lr = 64e-3  # peak 2e-3 at batch 8
        c.optim.warmup_steps = 200
        c.checkpoint.every, c.sample_every = 400, 1000
        c.show_metrics = ("loss", "acc_mean")
        c.tokenizer_dir = "runs/quickstart/tokenizer/model"
        c.data.cache_tokens = True  # encode the images once; the step then reads tokens
        # 36k images, not 12k: the model saw each of 12k ~5 times and scored 0.11 nats worse on unseen ones;
        # on 36k it scored 89.2% instead of 86.8% (encoding 24k more images adds ~1 min; measured 2026-11-24)
        c.data.kwargs.num_examples = 36_000
        c.sample.cfg = 4.0  # measured better class fidelity and Frechet distance than 1.5 for these small models
        # embed_kernel 7: each scale's input is embedded by a 7x7 convolution over its grid instead of VAR's
        # per-token linear, so every token sees its neighbourhood of the coarser scales' f_hat. Unseen-image
        # loss 1.76 -> 1.64 nats, class accuracy 89.4% -> 92.5% and 90.2% (seeds 0, 1; 2000 samples; 2026-11-25)
        c.model = ml_collections.ConfigDict(dict(
            depth=3, embed_dim=128, num_heads=2, mlp_ratio=4.0, num_classes=10, norm_eps=1e-6, shared_aln=False,
            attn_l2_norm=True, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, attn_impl="auto",
            dtype="float32", remat=False, scan_layers=False, embed_kernel=7))
        # self_correction: largest share of tokens replaced by random codes while the targets are built
        # (VAR only; arjax.nn.tokenizers.msvq.quantize_self_correcting); 0 = the reference's teacher forcing
        c.loss = ml_collections.ConfigDict(dict(class_dropout=0.1, label_smoothing=0.0, self_correction=0.0))
        # VAR's --pg/--pg0/--pgwp (fraction 0 = off); the reference pairs it with optim.schedule="lin<fraction>"
        c.progressive = ml_collections.ConfigDict(dict(fraction=0.0, first_scale=1, ramp_steps=0))
        return c
    raise ValueError(f"unknown quickstart stage {arg!r}: use tokenizer or var")
