"""ImageNet recipes: the multi-scale tokenizer, then VAR-d16 / d20 / d24 / d30 on its tokens at 256 px and
VAR-d36 (shared AdaLN) at 512 px.

Prepare ImageNet once, either as an ImageNet-layout folder (train/<wnid>/*.JPEG) or as TFDS
(`tfds build imagenet2012 --file_format=array_record --manual_dir=...`), then:

    arjax train --config configs/imagenet.py:tokenizer --workdir runs/in256_tok \\
        --set data.kwargs.root=/data/imagenet/train
    arjax train --config configs/imagenet.py:d16 --workdir runs/in256_d16 \\
        --set tokenizer_dir=runs/in256_tok/model --set data.kwargs.root=/data/imagenet/train
    # TFDS instead of a folder:
    #   --set data.name=tfds --set data.kwargs="{'name': 'imagenet2012', 'split': 'train'}"
    # or the released tokenizer (`arjax convert var ...`): --set tokenizer_dir=<converted model dir>

The VAR runs follow the official recipe (README of FoundationVision/VAR): global batch 768 (1024 for
d30), 200 / 250 / 350 / 350 epochs, base lr 1e-4 per 256 images (8e-5 from d24), warmup ep/50,
'lin0' decay to wpe, AdamW(0.9, 0.95) with wd 0.05 (cosine to 0.08 for d30), grad clip 2, class
dropout 0.1, AdaLN gamma init `alng`, bf16 compute in place of the reference's fp16 AMP. Step
counts are epochs x 1,281,167 / batch. The tokenizer recipe is ours (VAR never released one):
VQGAN-style L1 + L2 + LPIPS + PatchGAN after 20k steps, as LlamaGen trains its VQ-16; LPIPS needs
the user's VGG weights (see arjax/nn/lpips.py) and is set to 0 here so that it runs without them.

Each VAR recipe names the TPU slice it is planned for (`plan.topology`): at the official global batch it
fits that slice's HBM with the margin README's "Train on a TPU pod" table shows, measured by
`arjax plan --config configs/imagenet.py:dN` (which compiles for `plan.topology` when --topology is not
given). What makes it fit are config keys: `model.remat` (recompute each block in the backward pass),
`model.attn_impl="auto"` (the block-sparse splash kernel on TPU: no (L x L) scores) and, where needed,
`accum_steps` (microbatches per step; the global batch and so the recipe stay the official ones).
`model.scan_layers` compiles one block scanned `depth` times instead of `depth` copies: the same
numbers, a fraction of the compile time and of the compiler's host memory (d36 at 512 px did not
compile unrolled within a 24 GiB host).

Tokens are cached (`data.cache_tokens`): the encoder runs once per image and view instead of in every
step. The official augmentation (resize the shorter side to 1.125 x, random crop; no flip) is kept by
`data.cache_views` augmented encodings per image (LlamaGen caches ten crops), one drawn per image and
epoch: 8 views cover 8 of VAR-d16's 200 epochs' random crops, each seen 25 times.
"""
from pathlib import Path

import ml_collections

from arjax.config import load_config

IMAGENET_TRAIN = 1_281_167
HERE = Path(__file__).resolve().parent
# depth: (global batch, epochs, base lr, alng, wpe, final wd)
VAR_RECIPES = {16: (768, 200, 1e-4, 1e-3, 0.1, 0.05), 20: (768, 250, 1e-4, 1e-3, 0.1, 0.05),
               24: (768, 350, 8e-5, 1e-4, 0.01, 0.05), 30: (1024, 350, 8e-5, 1e-5, 0.01, 0.08),
               36: (768, 350, 8e-5, 5e-6, 0.01, 0.08)}  # 512 px, shared AdaLN (--saln=1 --pn=512)
# depth: (TPU slice, microbatches per step) verified with `arjax plan`; v4 / v5p slices count TensorCores
# (v4-32 = 16 chips), v5e / v6e count chips
SLICES = {16: ("v5e-16", 1), 20: ("v4-32", 2), 24: ("v5p-32", 1), 30: ("v6e-32", 2), 36: ("v5p-64", 1)}
CACHE_VIEWS = 8


def _steps(epochs: float, batch: int) -> int:
    return round(epochs * IMAGENET_TRAIN / batch)


def _imagenet_data(c: ml_collections.ConfigDict) -> None:
    c.data = ml_collections.ConfigDict(dict(name="folder", augment=True, cache_tokens=False,
                                            kwargs=ml_collections.ConfigDict(dict(root="/data/imagenet/train"))))
    c.sample.preview_classes = 8  # previews of classes 0..7; `arjax sample --classes` for others
    c.log_every, c.sample_every = 100, 5000
    c.checkpoint.every, c.checkpoint.keep = 2000, 3


def tokenizer() -> ml_collections.ConfigDict:
    c = load_config(str(HERE / "quickstart.py") + ":tokenizer")
    _imagenet_data(c)
    shapes = load_config(str(HERE / "var.py") + ":d16").tokenizer  # the released vae_ch160v4096z32 layout
    c.tokenizer = ml_collections.ConfigDict(shapes.to_dict())
    c.batch_size, epochs = 256, 40
    c.steps = _steps(epochs, c.batch_size)
    c.optim.update(base_lr=1e-4, warmup_steps=_steps(1, c.batch_size), wpe=0.1, weight_decay=0.0)
    c.loss.update(perceptual=0.0, reset_every=1000)  # set 1.0 with loss.lpips_vgg / loss.lpips_lin
    c.disc.update(weight=0.5, start=20_000, ch=64, num_layers=3, lr=1e-4, loss="hinge")
    return c


def var(depth: int) -> ml_collections.ConfigDict:
    if depth not in VAR_RECIPES:
        raise ValueError(f"no ImageNet recipe for depth {depth}: choose one of {sorted(VAR_RECIPES)}")
    batch, epochs, base_lr, alng, wpe, wd_end = VAR_RECIPES[depth]
    c = load_config(str(HERE / "quickstart.py") + ":var")
    _imagenet_data(c)
    c.data.update(cache_tokens=True, cache_views=CACHE_VIEWS)
    var_cfg = load_config(str(HERE / "var.py") + f":d{depth}")
    c.tokenizer_dir = "runs/in512_tok/model" if depth == 36 else "runs/in256_tok/model"
    model = var_cfg.model.to_dict()
    for shared in ("vocab_size", "cvae", "patch_nums"):  # taken from the tokenizer checkpoint
        model.pop(shared)
    c.model = ml_collections.ConfigDict(dict(model, num_classes=1000, init_adaln_gamma=alng, dtype="bfloat16",
                                            remat=True, attn_impl="auto", scan_layers=True))
    topology, c.accum_steps = SLICES[depth]
    # the slice `arjax plan` compiles for, and the tokenizer layout it plans with before one is trained
    c.plan = ml_collections.ConfigDict(dict(topology=topology, tokenizer=var_cfg.tokenizer.to_dict()))
    c.batch_size, c.steps = batch, _steps(epochs, batch)
    c.optim.update(base_lr=base_lr, warmup_steps=_steps(epochs / 50, batch), wpe=wpe, weight_decay=0.05,
                   weight_decay_end=wd_end)
    c.sample.update(cfg=1.5, top_k=900, top_p=0.96, preview_per_class=4)
    c.show_metrics = ("loss", "acc_mean", "acc_tail")
    return c


def get_config(arg: str = "d16") -> ml_collections.ConfigDict:
    if arg == "tokenizer":
        return tokenizer()
    if arg.startswith("d") and arg[1:].isdigit():
        return var(int(arg[1:]))
    raise ValueError(f"unknown ImageNet config {arg!r}: use tokenizer, d16, d20, d24, d30 or d36")
