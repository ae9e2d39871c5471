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
# # Train on your own images
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/03_own_images.ipynb)
#
# From a folder of images to a class-conditional generator: a tokenizer, then a VAR on its tokens, then
# samples. Along the way the VAR run is interrupted and resumed (what happens when a Colab session or
# a preemptible machine goes away), and its logs are read in TensorBoard.
#
# The folder layout is ImageNet's: one subfolder per class, any image files below it
# (`my_images/cats/001.jpg`, `my_images/dogs/x/2.png`, ...). Unreadable files are skipped and counted.

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
# ## Size and your data
#
# `IMAGES` is your folder. Left empty, the notebook writes a small stand-in folder (three classes of
# the built-in shapes as PNG files) so that it runs anywhere. On Colab, put your images on Google Drive
# and mount it (`from google.colab import drive; drive.mount("/content/drive")`), then set
# `IMAGES = "/content/drive/MyDrive/my_images"`.
#
# The recipe is the quickstart's (`configs/quickstart.py`): 32 px images, a small tokenizer and a small
# VAR. The test suite runs the notebook with `ARJAX_NOTEBOOK_SIZE=tiny` (a few steps on tiny networks).

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

IMAGES = ""  # your folder: IMAGES/<class>/<image files>
WORK = Path("arjax_runs") / "03_own_images"
CONFIG = REPO / "configs" / "quickstart.py"
STAGE = ":tiny" if TINY else ""
VAR_STEPS = [] if TINY else ["--set", "steps=3000"]  # the quickstart trains 7200; more steps, better samples
STOP_AFTER_S = 0 if TINY else 60  # the VAR run below is stopped this long after its progress bar appears
PER_CLASS = 2 if TINY else 8

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

# %%
from PIL import Image

from arjax.data.synthetic import CLASS_NAMES, SyntheticShapes

if not IMAGES:  # the stand-in: 64 px PNGs of three built-in classes, one folder each
    IMAGES = WORK / "images"
    per_class, chosen = (8 if TINY else 300), (0, 2, 3)
    shapes = SyntheticShapes(num_examples=10 * per_class, image_size=64, seed=7)
    for i in range(len(shapes)):
        example = shapes[i]
        if int(example["label"]) in chosen:
            folder = IMAGES / CLASS_NAMES[int(example["label"])].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(example["image"]).save(folder / f"{i:05d}.png")

from arjax.data import ImageFolder

folder = ImageFolder(IMAGES)
print(folder, "classes:", folder.class_names)
fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, i in zip(axes, np.linspace(0, len(folder) - 1, 8).astype(int)):
    ax.imshow(Image.open(folder[i]["path"]).convert("RGB"))
    ax.set_title(folder.class_names[folder[i]["label"]], fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The data overrides
#
# Any config key can be overridden with `--set key=value`. Three do it here: read a `folder` instead of
# the built-in dataset, where it is, and how many classes the VAR is conditioned on. Images are
# centre-cropped and resized to the tokenizer's size (32 px in this recipe).

# %%
DATA = ["--set", "data.name=folder", "--set", f"data.kwargs={{'root': '{Path(IMAGES).absolute()}'}}"]
print(" ".join(DATA))

# %% [markdown]
# ## The tokenizer
#
# Its preview shows real images over their reconstructions: when the reconstructions look right, the
# VAR has something good to learn from.

# %%
tok = arjax_cmd("train", "--config", f"{CONFIG}:tokenizer{STAGE}", "--workdir", WORK / "tokenizer", *DATA)
img = plt.imread(tok["preview"])
plt.figure(figsize=(6, 6 * img.shape[0] / img.shape[1]))
plt.imshow(img)
plt.axis("off")
plt.title("real (top) and reconstructed (bottom)")
plt.show()

# %% [markdown]
# ## The VAR, interrupted and resumed
#
# Here the VAR trains in a separate process, which is stopped with SIGTERM shortly after it starts,
# as a preemptible TPU VM or a closed laptop would stop it. arjax saves a checkpoint on SIGTERM;
# a hard kill (or the Jupyter stop button in an in-kernel run) loses only the steps since the last
# periodic checkpoint (`checkpoint.every`). Either way, rerunning **the same command** resumes:
# parameters, optimiser, step and the data iterator's position, bitwise as if never stopped.

# %%
import signal
import time

VAR_ARGS = ["train", "--config", f"{CONFIG}:var{STAGE}", "--workdir", WORK / "var", *DATA,
            "--set", f"model.num_classes={folder.num_classes}", "--set", f"tokenizer_dir={tok['model_dir']}",
            *VAR_STEPS]
log_path = WORK / "var_first_run.log"
env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
with open(log_path, "w") as log:
    run = subprocess.Popen([sys.executable, "-m", "arjax.cli", *map(str, VAR_ARGS)], stdout=log, stderr=log, env=env)
    while run.poll() is None and "train var" not in log_path.read_text():  # the progress bar: training started
        time.sleep(0.5)
    time.sleep(STOP_AFTER_S)
    run.send_signal(signal.SIGTERM)
    run.wait()
text = log_path.read_bytes().decode(errors="replace")
lines = [line.split("\r")[-1] for line in text.split("\n")]  # a progress bar: its last state
print("\n".join(line for line in lines if line.strip()))
print(f"(the first run exited with status {run.returncode})")

# %% [markdown]
# Now the same command again, in this kernel: it says where it resumes from.

# %%
var = arjax_cmd(*VAR_ARGS)

# %% [markdown]
# ## TensorBoard
#
# Each run writes TensorBoard logs into its workdir's `tensorboard/` folder (losses, learning rate,
# sample previews). Inline in the notebook: `%load_ext tensorboard` then `%tensorboard --logdir ...`
# (Colab has TensorBoard; elsewhere `pip install tensorboard`). Below the same event files are also read
# directly, to draw the VAR's loss across the interruption: one colour per process.

# %%
import importlib.util

if importlib.util.find_spec("tensorboard") and not TINY:  # the two magics, from Python
    from IPython import get_ipython

    get_ipython().run_line_magic("load_ext", "tensorboard")
    get_ipython().run_line_magic("tensorboard", f"--logdir {WORK}")
else:
    print(f"TensorBoard: %load_ext tensorboard\n             %tensorboard --logdir {WORK}"
          + ("" if importlib.util.find_spec("tensorboard") else "   (pip install tensorboard first)"))

# %%
import struct

from tensorboardX.proto.event_pb2 import Event


def read_scalars(event_file, tag):
    """(step, value) pairs of one scalar from a TensorBoard event file (TFRecord framing)."""
    data, i, points = Path(event_file).read_bytes(), 0, []
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event.FromString(data[i + 12:i + 12 + n])
        points += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
        i += 12 + n + 4
    return points


plt.figure(figsize=(7, 3))
for k, f in enumerate(sorted((WORK / "var" / "tensorboard").glob("events.out.tfevents.*"))):
    points = read_scalars(f, "train/loss")
    if points:
        plt.plot(*zip(*points), ".-", label=["first run (stopped)", "resumed"][min(k, 1)])
plt.xlabel("step")
plt.ylabel("loss (nats per token)")
plt.legend()
plt.title("VAR training loss, across the interruption")
plt.show()

# %% [markdown]
# ## Samples
#
# One row per class of your folder, labelled with the folder's names.

# %%
from arjax.cli import sample_grid

pipe = arjax.load(var["model_dir"])
classes = list(range(pipe.cfg.num_classes))
grid = sample_grid(pipe, classes, PER_CLASS, WORK / "samples.png", cfg=4.0, top_k=900, top_p=0.96, seed=0,
                   batch_size=len(classes) * PER_CLASS)
img = plt.imread(grid)
scale = min(8 / img.shape[1], 8 / img.shape[0])  # inches per pixel: at most 8 x 8 inches
plt.figure(figsize=(scale * img.shape[1], scale * img.shape[0]))
plt.imshow(img)
plt.axis("off")
plt.show()

# %% [markdown]
# ## For your data
#
# * Bigger images: the tokenizer's size is `2 ** (len(ch_mult) - 1) * patch_nums[-1]` (32 px here); for
#   256 px use `configs/imagenet.py:tokenizer` and `:d16` (a GPU or TPU job), or fine-tune from the
#   converted release (`02_official_var.ipynb`).
# * More steps help a lot at this size: `--set steps=7200` is the quickstart's VAR budget.
# * From a terminal the two stages are
#
#   ```bash
#   arjax train --config configs/quickstart.py:tokenizer --workdir runs/tok \
#       --set data.name=folder --set "data.kwargs={'root': 'my_images'}"
#   arjax train --config configs/quickstart.py:var --workdir runs/var \
#       --set data.name=folder --set "data.kwargs={'root': 'my_images'}" \
#       --set tokenizer_dir=runs/tok/model --set model.num_classes=3
#   ```
