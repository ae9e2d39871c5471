# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # arjax quickstart: a tokenizer and a VAR, trained from scratch
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/01_quickstart.ipynb)
#
# This notebook is `arjax quickstart` taken apart, one stage per cell. On the built-in dataset (ten
# classes of coloured shapes, 32 px, generated on the fly: nothing to download) it trains
#
# 1. a **multi-scale tokenizer**, which turns an image into token maps of growing size (1x1, 2x2, ... 8x8);
# 2. a class-conditional **VAR**, which predicts each scale's tokens from the coarser ones;
#
# then samples a labelled grid, scores the samples with a classifier trained on real images, and shows
# how the scales build an image. A CPU is enough: the full run takes about 18 minutes on 2 cores (a GPU
# runtime is faster). Every training cell can be stopped and rerun: it resumes.

# %% [markdown]
# ## Setup
#
# On Colab this clones the repository (the configs live there) and installs it; locally it uses the
# checkout this notebook belongs to (`pip install -e .` if arjax is not importable yet).

# %%
import os
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB and not Path("arjax_repo").is_dir():
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/arjax/arjax", "arjax_repo"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "./arjax_repo"], check=True)


def find_repo() -> Path:
    """The arjax checkout: configs/ and launch/ sit next to the package."""
    try:
        import arjax
        candidates = [Path(arjax.__file__).resolve().parents[1]]
    except ImportError:
        candidates = []
    for d in [*candidates, Path("arjax_repo"), Path.cwd(), *Path.cwd().parents]:
        if (d / "configs" / "quickstart.py").is_file() and (d / "arjax").is_dir():
            return d.resolve()
    raise FileNotFoundError("no arjax checkout found: run this notebook from inside the repository")


REPO = find_repo()
try:
    import arjax
except ImportError:  # a plain checkout: install its dependencies, import it from the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO)], check=True)
    sys.path.insert(0, str(REPO))
    import arjax
print(f"arjax {arjax.__version__} from {Path(arjax.__file__).parent}; configs in {REPO / 'configs'}")

# %% [markdown]
# ## Size
#
# `SIZE = "full"` runs the README's recipe. The test suite runs every notebook with
# `ARJAX_NOTEBOOK_SIZE=tiny`: the same cells on tiny networks for a few steps, so the pictures below
# are then noise. Everything long in this notebook is sized here.

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

CONFIG = REPO / "configs" / "quickstart.py"
STAGE = ":tiny" if TINY else ""  # `file.py:stage:tiny` is any training config at a size that runs in seconds
WORK = Path("arjax_runs") / "01_quickstart"  # everything this notebook writes
PER_CLASS = 1 if TINY else 8  # samples per class in the grid
EVAL_PER_CLASS = 1 if TINY else 50
CLASSIFIER_STEPS = 10 if TINY else 1500

import jax
import matplotlib.pyplot as plt
import numpy as np

from arjax.cli import build_parser


def arjax_cmd(*argv):
    """Run an `arjax` command in this kernel, as the shell would; errors raise here with their traceback."""
    argv = [str(a) for a in argv]
    print("$ arjax " + " ".join(argv))
    args = build_parser().parse_args(argv)
    return args.fn(args)


def plot_history(summary, keys, title):
    """Training curves from a run's summary (the same numbers TensorBoard shows)."""
    hist = summary["history"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 2.8))
    for ax, key in zip(np.atleast_1d(axes), keys):
        ax.plot([h["step"] for h in hist], [h[key] for h in hist])
        ax.set(title=key, xlabel="step")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def show_png(path, title=None, width=10, max_height=10):
    img = plt.imread(path)
    scale = min(width / img.shape[1], max_height / img.shape[0])  # inches per pixel
    plt.figure(figsize=(scale * img.shape[1], scale * img.shape[0]))
    plt.imshow(img)
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()


print(f"SIZE={SIZE}: writing to {WORK.absolute()}; JAX on {jax.devices()[0].platform}")

# %% [markdown]
# ## The data
#
# Ten classes, each one shape in one colour, drawn at random positions, sizes and angles over a random
# background gradient. A row per class:

# %%
from arjax.data.synthetic import CLASS_NAMES, SyntheticShapes

data = SyntheticShapes(num_examples=60, image_size=32, seed=0)
fig, axes = plt.subplots(10, 6, figsize=(6, 10))
for i, ax in enumerate(axes.flat):
    r, c = divmod(i, 6)
    ax.imshow(data[r + 10 * c]["image"])  # example i has label i % 10
    ax.axis("off")
    if c == 0:
        ax.set_title(CLASS_NAMES[r], fontsize=8, loc="left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Stage 1: the tokenizer
#
# A VQ-VAE whose quantiser works scale by scale: the 1x1 map is quantised first, its contribution is
# subtracted, then the 2x2 map quantises what is left, and so on (the *residual* f-hat of VAR). The
# progress bar shows the loss, the reconstruction PSNR and the share of the codebook in use.
# This is `arjax train --config configs/quickstart.py:tokenizer --workdir ...`; stop it at any time and
# rerun the cell: it resumes from the last checkpoint.

# %%
tok_summary = arjax_cmd("train", "--config", f"{CONFIG}:tokenizer{STAGE}", "--workdir", WORK / "tokenizer")
TOKENIZER = tok_summary["model_dir"]

# %% [markdown]
# The curves, and the last preview the run wrote: real images (top row) over their reconstructions.

# %%
plot_history(tok_summary, ["loss", "psnr", "usage"], "tokenizer")
show_png(tok_summary["preview"], "real (top) and reconstructed (bottom)", width=6)

# %% [markdown]
# ## Stage 2: the VAR
#
# The transformer sees the class and, for every scale, the image so far (the f-hat of the coarser
# scales, resized to the scale's grid), and predicts all tokens of the scale at once. The images are
# encoded once into a token cache first. `acc_mean` is the share of tokens it predicts right.

# %%
var_summary = arjax_cmd("train", "--config", f"{CONFIG}:var{STAGE}", "--workdir", WORK / "var",
                        "--set", f"tokenizer_dir={TOKENIZER}")
plot_history(var_summary, ["loss", "acc_mean"], "VAR")

# %% [markdown]
# ## Sample a labelled grid
#
# `arjax.load` reads the model directory the run exported (tokenizer and transformer together).
# Sampling uses classifier-free guidance (`cfg`) and top-k / top-p filtering; each sample draws from
# its own key, so the grid does not depend on the batch size.

# %%
from arjax.cli import sample_grid

pipe = arjax.load(var_summary["model_dir"])
CFG, TOP_K, TOP_P = 4.0, 900, 0.96  # the quickstart's sampling settings (configs/quickstart.py: sample)
classes = list(range(pipe.cfg.num_classes))
grid = sample_grid(pipe, classes, PER_CLASS, WORK / "samples.png", cfg=CFG, top_k=TOP_K, top_p=TOP_P, seed=0,
                   batch_size=len(classes) * PER_CLASS)
show_png(grid, "one row per class", width=8)

# %% [markdown]
# ## Evaluate
#
# A small CNN trained on real images of the dataset (cached under the work directory) decides which
# class each sample shows: the class accuracy is the share assigned to the class they were asked for.
# The Frechet distance compares the classifier's features of samples and real images (lower is better;
# the real-vs-real floor is what a perfect generator would score). This is `arjax eval --checkpoint ...`.

# %%
from arjax.eval.classifier import get_classifier
from arjax.eval.run import evaluate_pipeline, format_report

size = pipe.tokenizer.cfg.image_size
classifier = get_classifier(size, WORK / "classifier", steps=CLASSIFIER_STEPS)
report = evaluate_pipeline(pipe, per_class=EVAL_PER_CLASS, seed=1, cfg=CFG, top_k=TOP_K, top_p=TOP_P,
                           classifier=classifier, batch_size=len(classes) * PER_CLASS)
print(format_report(report))

names = report["class_names"]
acc = [a if a is not None else 0 for a in report["per_class_accuracy"]]
plt.figure(figsize=(8, 3))
plt.bar(range(len(acc)), acc, color="tab:blue")
plt.axhline(report["class_accuracy"], color="k", ls="--", label=f"all: {report['class_accuracy']:.1f}%")
plt.xticks(range(len(acc)), names, rotation=45, ha="right")
plt.ylabel("% assigned to their class")
plt.ylim(0, 100)
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## How the scales build an image
#
# A VAR sample is a list of token maps, coarse to fine. The tokenizer adds each scale's codes to a
# running feature map (f-hat); decoding f-hat after each scale shows what the model had decided by
# then: the colour and rough layout come first, the shape's edges at the last scales.

# %%
import jax.numpy as jnp
from flax import nnx

tok = pipe.tokenizer


@jax.jit
def decode_after_each_scale(state, tokens):
    vae = nnx.merge(tok.graphdef, state)
    fhats = vae.quantize.indices_to_fhat(tokens, cumulative=True)  # f-hat after scale 1, 2, ...
    return jnp.stack([vae.fhat_to_img(f) for f in fhats], axis=1)  # (B, scales, H, W, 3) in [-1, 1]


shown = classes[:4]
labels = np.repeat(np.asarray(classes), PER_CLASS)  # the grid's batch again: nothing new to compile
_, tokens = pipe.sample(labels, cfg=CFG, top_k=TOP_K, top_p=TOP_P, seed=0, return_tokens=True)
with jax.default_matmul_precision("highest"):
    steps = np.asarray(decode_after_each_scale(tok.state, tokens[:: PER_CLASS][: len(shown)]))
pns = tok.schedule()
fig, axes = plt.subplots(len(shown), len(pns), figsize=(1.6 * len(pns), 1.7 * len(shown)), squeeze=False)
for r, row in enumerate(axes):
    for c, ax in enumerate(row):
        ax.imshow((steps[r, c] + 1) / 2)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title(f"after {pns[c]}x{pns[c]}", fontsize=9)
        if c == 0:
            ax.set_ylabel(names[shown[r]], fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Where next
#
# * The same two stages from a terminal: `arjax quickstart` (or the two `arjax train` commands in the
#   README), then `arjax sample --checkpoint arjax_runs/01_quickstart/var/model --classes 0,1,2 --cfg 4`.
# * TensorBoard logs are in each stage's `tensorboard/` folder: `tensorboard --logdir arjax_runs`.
# * `02_official_var.ipynb` runs the released ImageNet VAR; `03_own_images.ipynb` trains on your images.
