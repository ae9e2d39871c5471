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
# # The official VAR in JAX: download, convert, sample, edit
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/02_official_var.ipynb)
#
# VAR's authors released their ImageNet 256 px tokenizer and transformers as PyTorch checkpoints on the
# Hugging Face hub (`FoundationVision/var`). This notebook downloads the tokenizer and VAR-d16 (310M
# parameters), converts them into an arjax model directory (the converter checks every tensor; arjax
# matches the official code numerically), and then
#
# * samples class-conditional grids,
# * shows what classifier-free guidance (`cfg`) and top-k filtering do, as a picture,
# * edits an image zero-shot: inpainting, outpainting and class-conditional editing.
#
# A GPU runtime is recommended (Runtime -> Change runtime type); on a CPU each 256 px sample of d16 takes
# seconds.

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
# `SIZE = "full"` downloads the released weights (about 1.4 GB). The test suite runs this notebook with
# `ARJAX_NOTEBOOK_SIZE=tiny`: instead of downloading, it converts the parity fixture `var_tiny` (a
# 2-layer VAR with random weights, saved in the release's exact format, from `../shared/fixtures`),
# so every cell runs, but the pictures are noise.

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

WORK = Path("arjax_runs") / "02_official_var"
MODEL = WORK / ("var_tiny" if TINY else "var_d16")  # the converted model directory
# ImageNet classes shown below (the VAR demo's)
NAMES = {207: "golden retriever", 360: "otter", 387: "lesser panda", 974: "geyser", 88: "macaw", 979: "valley",
         417: "balloon", 279: "arctic fox", 980: "volcano", 1000: "(unconditional)"}
GRID_CLASSES = [207, 360] if TINY else [207, 360, 387, 974, 88, 979, 417, 279]
PER_CLASS = 2 if TINY else 4
SWEEP_TOP_K = [900] if TINY else [10, 100, 900]  # each top-k value compiles the sampler once
SWEEP_CFG = [1.0, 4.0] if TINY else [1.0, 1.5, 3.0, 5.0]

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


print(f"SIZE={SIZE}: writing to {WORK.absolute()}; JAX on {jax.devices()[0].platform}")

# %% [markdown]
# ## Download the released checkpoints
#
# From a terminal this is
#
# ```bash
# huggingface-cli download FoundationVision/var vae_ch160v4096z32.pth var_d16.pth --local-dir weights
# ```
#
# Reading `.pth` files needs PyTorch (Colab has it; elsewhere `pip install torch`, the CPU build is
# enough); `.safetensors` files need nothing extra. Other sizes: `var_d20.pth`, `var_d24.pth`,
# `var_d30.pth`, and the 512 px `var_d36.pth`.

# %%
import importlib.util

if TINY:
    fixtures = Path(os.environ.get("ARJAX_FIXTURES", REPO.parent / "shared" / "fixtures"))
    VAE_FILE, VAR_FILE = fixtures / "var_tiny" / "vae.safetensors", fixtures / "var_tiny" / "var.safetensors"
    print(f"CI size: the release-format fixture {VAE_FILE.parent} stands in for the download")
else:
    for module, package in (("huggingface_hub", "huggingface_hub"), ("torch", "torch")):
        if importlib.util.find_spec(module) is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    from huggingface_hub import hf_hub_download

    print("$ huggingface-cli download FoundationVision/var vae_ch160v4096z32.pth var_d16.pth "
          f"--local-dir {WORK / 'weights'}")
    VAE_FILE = hf_hub_download("FoundationVision/var", "vae_ch160v4096z32.pth", local_dir=WORK / "weights")
    VAR_FILE = hf_hub_download("FoundationVision/var", "var_d16.pth", local_dir=WORK / "weights")

# %% [markdown]
# ## Convert
#
# `arjax convert var` infers depth, width, heads and the scale schedule from the tensors, checks every
# key and shape, and writes an orbax checkpoint with its description (`arjax.json`). It runs once; the
# cell skips it when the model directory is already there.

# %%
if not (MODEL / "arjax.json").is_file():
    arjax_cmd("convert", "var", "--vae", VAE_FILE, "--var", VAR_FILE, "--out", MODEL)
pipe = arjax.load(MODEL)
size = pipe.tokenizer.cfg.image_size
n_params = sum(x.size for x in jax.tree.leaves(pipe.state))
print(f"VAR depth {pipe.cfg.depth}, width {pipe.cfg.embed_dim}, {n_params / 1e6:.1f}M transformer parameters; "
      f"{size} px images as {pipe.tokenizer.seq_len()} tokens on the scales {pipe.schedule()}")

# %% [markdown]
# ## Class-conditional samples
#
# `pipe.sample(labels, cfg=..., top_k=..., top_p=..., seed=...)` returns images in [0, 1]. These are
# the settings of the VAR README's FID numbers (cfg 1.5, top-k 900, top-p 0.96). Sample `i` of a call
# draws from its own key, so a sample does not depend on the batch it is in. The same from a terminal:
# `arjax sample --checkpoint arjax_runs/02_official_var/var_d16 --classes 207,360 --per-class 4`.

# %%
labels = np.repeat(GRID_CLASSES, PER_CLASS)
images = np.asarray(pipe.sample(labels, cfg=1.5, top_k=900, top_p=0.96, seed=0, batch_size=16))

fig, axes = plt.subplots(len(GRID_CLASSES), PER_CLASS, figsize=(2 * PER_CLASS, 2.1 * len(GRID_CLASSES)),
                         squeeze=False)
for ax, img, label in zip(axes.flat, images, labels):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
for r, c in enumerate(GRID_CLASSES):
    axes[r, 0].set_ylabel(f"{c}\n{NAMES[c]}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Guidance and top-k, as a picture
#
# One class, one seed, varied settings. Classifier-free guidance mixes the conditional and
# unconditional predictions, `(1 + t) * cond - t * uncond` with `t` ramping up to `cfg` over the
# scales: higher `cfg` gives more typical, less varied images. Top-k keeps only the k most likely codes
# (of 4096) at each draw: small k is safe and flat, large k varied. (A change of `top_k` compiles the
# sampler once more; `cfg` does not.)

# %%
sweep_class = GRID_CLASSES[0]
fig, axes = plt.subplots(len(SWEEP_TOP_K), len(SWEEP_CFG), figsize=(2.2 * len(SWEEP_CFG), 2.3 * len(SWEEP_TOP_K)),
                         squeeze=False)
for r, top_k in enumerate(SWEEP_TOP_K):
    for c, cfg in enumerate(SWEEP_CFG):
        img = pipe.sample([sweep_class], cfg=cfg, top_k=top_k, top_p=0.96, seed=1)[0]
        axes[r, c].imshow(np.asarray(img))
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
        axes[0, c].set_title(f"cfg {cfg}")
    axes[r, 0].set_ylabel(f"top-k {top_k}")
fig.suptitle(f"class {sweep_class} ({NAMES[sweep_class]}), seed 1")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Zero-shot editing
#
# VAR was never trained to edit, yet it can: encode an image into tokens, keep the tokens outside a
# region and let the model sample the others, conditioned on the kept ones at every scale (the rule of
# the official demo). With a class label this is class-conditional editing; label 1000 is
# unconditional. The mask is `True` where pixels are regenerated; `~` inverts a mask string
# (outpainting).
#
# **Your image**: set `IMAGE` to a file path. On Colab at the full size, leaving it empty opens an
# upload button; otherwise a generated landscape stands in.

# %%
from PIL import Image

IMAGE = ""  # a path to your own picture (any size: it is centre-cropped and resized)
if not IMAGE and IN_COLAB and not TINY:
    from google.colab import files

    uploaded = files.upload()  # choose a photo; cancel to use the generated one
    IMAGE = next(iter(uploaded), "")
if not IMAGE:  # a stand-in picture: sky, sun and hills
    y, x = np.mgrid[0:256, 0:256] / 256.0
    sky = np.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.95 - 0.2 * y], -1)
    sun = ((x - 0.72) ** 2 + (y - 0.25) ** 2) < 0.01
    hills = y > 0.62 + 0.08 * np.sin(7 * x)
    picture = np.where(sun[..., None], [1.0, 0.85, 0.3], np.where(hills[..., None], [0.2, 0.55, 0.25], sky))
    IMAGE = WORK / "landscape.png"
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture * 255).astype(np.uint8)).save(IMAGE)
print(f"editing {IMAGE}")

# %%
from arjax.sample import edit

source = edit.load_image(IMAGE, size)  # (size, size, 3) in [-1, 1]
a, b = size // 4, 3 * size // 4  # the central box, in model pixels
edits = [  # (what, mask string as `arjax edit --mask` takes it, label)
    ("inpainting", f"box:{a},{a},{b},{b}", 1000),
    ("outpainting", f"~box:{a},{a},{b},{b}", 1000),
    (f"class edit: {NAMES[207]}", f"box:{a},{size // 2},{b},{size}", 207),
    (f"class edit: {NAMES[980]}", f"box:0,0,{size},{size // 2}", 980),
]
masks = np.stack([edit.parse_mask(spec, size) for _, spec, _ in edits])
edited = pipe.edit(np.stack([source] * len(edits)), masks, label=[lab for *_, lab in edits], cfg=3.0, top_k=900,
                   top_p=0.96, seed=0)

fig, axes = plt.subplots(len(edits), 1, figsize=(9, 3.1 * len(edits)))
for ax, (what, spec, label), mask, out in zip(axes, edits, masks, np.asarray(edited)):
    ax.imshow(edit.before_after(source, mask, out))  # source | region to regenerate | result
    ax.set_title(f"{what}   (--mask {spec} --label {label})", fontsize=10)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The same from a terminal, one edit per command:
#
# ```bash
# arjax edit --checkpoint arjax_runs/02_official_var/var_d16 --image photo.jpg --mask box:64,64,192,192 \
#     --label 1000 --out inpaint.png
# ```
#
# Next: `06_evaluate.ipynb` measures this model's FID the way the paper does.
