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
# # The family: VAR, HMAR, FlexVAR, LlamaGen and MaskGIT side by side
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/04_family.ipynb)
#
# Five ways to generate an image token by token, trained here on equal footing (same data, batch,
# optimiser, step budget and transformer size: `configs/family.py`):
#
# | member | generates | tokenizer | what to look at below |
# |---|---|---|---|
# | **VAR** | the next scale, all its tokens at once | residual multi-scale | the baseline |
# | **HMAR** | the next scale from the previous one only, then refines it in masked steps | VAR's | the step schedule |
# | **FlexVAR** | the next scale, on any schedule of scales | its own, one codebook per scale | other resolutions |
# | **LlamaGen** | one token at a time, in raster order | one-scale VQ | the classic |
# | **MaskGIT** | all tokens, unmasked over a few iterations | LlamaGen's | the iteration count |
#
# Each member is one module in `arjax/members/`; `arjax.load`, `arjax train`, `arjax sample` and
# `arjax edit` work the same for all of them.

# %% [markdown]
# ## Setup
#
# On Colab this clones the repository and installs it; locally it uses the checkout this notebook
# belongs to.

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
# At `SIZE = "full"` each member trains `configs/family.py`'s 3000 steps (and each tokenizer 600): about
# 35 minutes on a 2-core CPU in all. The test suite runs the notebook with `ARJAX_NOTEBOOK_SIZE=tiny`:
# a few steps of tiny networks (16 px images, 4 scales), so the pictures are then noise.

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

CONFIG = REPO / "configs" / "family.py"
STAGE = ":tiny" if TINY else ""
WORK = Path("arjax_runs") / "04_family"
TOKENIZERS = {"var": "tokenizer", "hmar": "tokenizer", "flexvar": "flex_tokenizer", "llamagen": "vq_tokenizer",
              "maskgit": "vq_tokenizer"}  # member -> the stage that trains its tokenizer
MEMBERS = list(TOKENIZERS)
CLASSES = list(range(4 if TINY else 10))  # one column per class in the pictures

import time

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


def image_row(axes, images, titles=None, ylabel=None):
    for k, ax in enumerate(axes):
        ax.imshow(np.asarray(images[k]))
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    if ylabel:
        axes[0].set_ylabel(ylabel, fontsize=9)


print(f"SIZE={SIZE}: writing to {WORK.absolute()}; JAX on {jax.devices()[0].platform}")

# %% [markdown]
# ## Three tokenizers
#
# VAR and HMAR share the residual multi-scale tokenizer of the quickstart; FlexVAR has its own (each
# scale quantised on its own, so any subset of scales decodes); LlamaGen and MaskGIT use a one-scale
# VQ tokenizer (the 8x8 latent grid itself).

# %%
tokenizer_dirs = {}
for stage in dict.fromkeys(TOKENIZERS.values()):
    summary = arjax_cmd("train", "--config", f"{CONFIG}:{stage}{STAGE}", "--workdir", WORK / stage)
    tokenizer_dirs[stage] = summary["model_dir"]

# %% [markdown]
# ## Five generators
#
# The same command for each, `--set tokenizer_dir=...` pointing at its tokenizer.

# %%
summaries = {}
for member in MEMBERS:
    summaries[member] = arjax_cmd("train", "--config", f"{CONFIG}:{member}{STAGE}", "--workdir", WORK / member,
                                  "--set", f"tokenizer_dir={tokenizer_dirs[TOKENIZERS[member]]}")

plt.figure(figsize=(7, 3.2))
for member, s in summaries.items():
    key = "loss_next" if "loss_next" in s["history"][-1] else "loss"  # HMAR: its next-scale part
    plt.plot([h["step"] for h in s["history"]], [h[key] for h in s["history"]], label=member)
plt.xlabel("step")
plt.ylabel("nats per token")
plt.legend()
plt.title("training loss (FlexVAR, LlamaGen and MaskGIT predict other tokenizers' codes;\n"
          "MaskGIT scores masked tokens only)", fontsize=10)
plt.show()

# %% [markdown]
# ## Side by side
#
# The same classes and seed for every member, each with its config's sampling settings (cfg 4). The
# table below times a second call, after compilation.

# %%
pipes = {m: arjax.load(summaries[m]["model_dir"]) for m in MEMBERS}
names = pipes["var"].class_names
fig, axes = plt.subplots(len(MEMBERS), len(CLASSES), figsize=(1.5 * len(CLASSES), 1.6 * len(MEMBERS)), squeeze=False)
rows = []
for row, (member, pipe) in zip(axes, pipes.items()):
    images = np.asarray(pipe.sample(CLASSES, cfg=4.0, seed=0))
    t0 = time.perf_counter()
    np.asarray(pipe.sample(CLASSES, cfg=4.0, seed=1))
    ms = 1000 * (time.perf_counter() - t0) / len(CLASSES)
    image_row(row, images, [names[c] for c in CLASSES] if member == MEMBERS[0] else None, member)
    params = sum(x.size for x in jax.tree.leaves(pipe.state))
    metrics = summaries[member]["metrics"]
    rows.append((member, params, metrics.get("loss_next", metrics["loss"]), ms))
plt.tight_layout()
plt.show()
print(f"{'member':10s} {'params':>10s} {'final loss':>11s} {'ms / image':>11s}")
for member, params, loss, ms in rows:
    print(f"{member:10s} {params:10,d} {loss:11.3f} {ms:11.1f}")

# %% [markdown]
# ## HMAR: masked steps within a scale
#
# HMAR predicts each scale from the previous one only (a Markov chain over scales, cheaper attention
# than VAR's), and can then spend more steps on a scale: draw every token, keep the most confident,
# re-mask and redraw the rest with its masked branch. The schedule is chosen at sampling time, one
# entry per scale: `steps=(1, 1, ...)` is pure next-scale prediction. More steps on the fine scales cost
# time and may fix details.

# %%
hmar = pipes["hmar"]
pns = hmar.schedule()
schedules = [tuple(1 for _ in pns), tuple(min(2 ** max(0, k - 2), pn * pn) for k, pn in enumerate(pns))]
fig, axes = plt.subplots(len(schedules), len(CLASSES), figsize=(1.5 * len(CLASSES), 1.7 * len(schedules)),
                         squeeze=False)
for row, steps in zip(axes, schedules):
    t0 = time.perf_counter()
    images = np.asarray(hmar.sample(CLASSES, cfg=4.0, seed=0, steps=steps))
    image_row(row, images, ylabel=f"steps {steps}\n{time.perf_counter() - t0:.1f} s")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## FlexVAR: other resolutions from the same model
#
# FlexVAR's scales are not residuals of one another, so its transformer and tokenizer work on any
# increasing schedule of scales: fewer scales for a smaller, faster image, larger ones for an image
# bigger than any it was trained on (zero-shot; quality falls off with the distance from training).
# The image side is the last scale's side times the tokenizer's downsampling.

# %%
flex = pipes["flexvar"]
trained = flex.schedule()
down = flex.tokenizer.cfg.image_size // trained[-1]
last = trained[-1]
flex_schedules = [trained[:-1], trained, (*trained, last + last // 2), (*trained, 2 * last)]
fig, axes = plt.subplots(1, len(flex_schedules), figsize=(3 * len(flex_schedules), 3.4),
                         gridspec_kw={"width_ratios": [s[-1] for s in flex_schedules]})
for ax, schedule in zip(axes, flex_schedules):
    img = np.asarray(flex.sample([CLASSES[1]], cfg=4.0, seed=0, patch_nums=schedule))[0]
    ax.imshow(img)
    ax.set_title(f"{img.shape[0]} px{' (trained)' if schedule == trained else ''}\n{schedule}", fontsize=8)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## MaskGIT: the number of iterations
#
# MaskGIT starts from an all-masked grid and, at each iteration, draws every masked token, keeps the
# most confident ones (a cosine schedule decides how many) and re-masks the rest. Fewer iterations fix
# more tokens at once: faster, and less consistent. LlamaGen, for comparison, takes one step per token.

# %%
maskgit = pipes["maskgit"]
fig, axes = plt.subplots(2, len(CLASSES), figsize=(1.5 * len(CLASSES), 3.4), squeeze=False)
for row, iterations in zip(axes, (2, 8)):
    images = np.asarray(maskgit.sample(CLASSES, cfg=4.0, seed=0, iterations=iterations))
    image_row(row, images, ylabel=f"{iterations} iterations")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## More
#
# * The README's family table (3000 steps each, 500 samples scored) and `python benchmarks/family.py`,
#   which trains all of them and prints it.
# * Zero-shot editing works for every member: `pipe.edit(images, mask, label=...)`, see
#   `02_official_var.ipynb`.
# * From a terminal: `arjax sample --checkpoint arjax_runs/04_family/hmar/model --classes 0,1,2 --steps 1,1,1,2,4,8`
#   or `arjax sample --checkpoint arjax_runs/04_family/flexvar/model --classes 0,1,2 --patch-nums 1,2,4,8,12`.
