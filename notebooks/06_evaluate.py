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
# # Evaluate: FID the way papers measure it
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/06_evaluate.ipynb)
#
# Papers in this field report ImageNet FID, sFID, Inception Score, precision and recall from OpenAI's
# ADM evaluator: 50,000 class-balanced samples against the `VIRTUAL_imagenet256_labeled.npz` reference
# batch, through the 2015 Inception-v3. `arjax eval fid` computes the same five numbers in one
# resumable command, without TensorFlow. This notebook scores the converted VAR-d16 release (its README
# reports FID 3.55 at cfg 1.5, top-k 900, top-p 0.96), then draws how FID moves with the guidance scale.
#
# A GPU runtime is strongly recommended at the full size: 50,000 samples and their Inception features
# take hours on a CPU. The run is resumable: rerun the cell after a disconnect and it continues.

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
# At `SIZE = "full"`: the VAR-d16 release, 50,000 samples, the real Inception weights and the VIRTUAL
# reference batch (downloads of about 0.3, 0.1 and 1.5 GB). The test suite runs the notebook with
# `ARJAX_NOTEBOOK_SIZE=tiny`: an untrained 64 px VAR of 10 classes (`arjax init`), 10 samples, the FID
# fixture's random-weight Inception (`../shared/fixtures/fid`, same architecture) and a reference of 20
# built-in images. The numbers are then meaningless but every step runs.

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

WORK = Path("arjax_runs") / "06_evaluate"
NUM = 10 if TINY else 50_000  # samples; the protocol is 50,000 (FID is biased upwards at fewer)
SWEEP_NUM = 10 if TINY else 5_000  # per point of the guidance sweep: relative comparisons only
SWEEP_CFG = [1.0, 4.0] if TINY else [1.0, 1.5, 2.0, 3.0]
SAMPLING = dict(top_k=900, top_p=0.96, seed=0)  # VAR's FID settings (with cfg 1.5)
# the knobs of the evaluator (ADM: 5000, 10000) and batch sizes, small at the tiny size
KNOBS = ["--split-size", 10, "--pr-batch", 10, "--batch-size", 10, "--inception-batch", 10] if TINY else []
if TINY:
    os.environ["ARJAX_CACHE"] = str((WORK / "cache").absolute())  # reference features of the random Inception

import json

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
# ## The model
#
# The converted VAR-d16 release, as `02_official_var.ipynb` makes it (reused when that notebook ran
# in the same directory).

# %%
import importlib.util

if TINY:
    MODEL = WORK / "untrained_var"
    if not (MODEL / "arjax.json").is_file():
        arjax_cmd("init", "--config", REPO / "configs" / "var.py:tiny", "--out", MODEL)
else:
    MODEL = Path("arjax_runs") / "02_official_var" / "var_d16"
    if not (MODEL / "arjax.json").is_file():
        for module in ("huggingface_hub", "torch"):
            if importlib.util.find_spec(module) is None:
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", module], check=True)
        from huggingface_hub import hf_hub_download

        print("$ huggingface-cli download FoundationVision/var vae_ch160v4096z32.pth var_d16.pth")
        vae = hf_hub_download("FoundationVision/var", "vae_ch160v4096z32.pth", local_dir=WORK / "weights")
        var = hf_hub_download("FoundationVision/var", "var_d16.pth", local_dir=WORK / "weights")
        arjax_cmd("convert", "var", "--vae", vae, "--var", var, "--out", MODEL)
print(f"scoring {MODEL}")

# %% [markdown]
# ## The Inception weights and the reference batch
#
# Two downloads, once:
#
# ```bash
# wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
# wget https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/\
# VIRTUAL_imagenet256_labeled.npz
# ```
#
# The first is pytorch-fid's conversion of the 2015 Inception (reading `.pth` needs PyTorch); the
# second is ADM's reference: 10,000 ImageNet training images plus the statistics of all of them. Your
# own reference (a folder, a TFDS split, or the built-in dataset) is one command:
# `arjax eval ref --source /data/val --size 256 --out ref.npz`.

# %%
import urllib.request

if TINY:
    fixtures = Path(os.environ.get("ARJAX_FIXTURES", REPO.parent / "shared" / "fixtures")) / "fid"
    spec = importlib.util.spec_from_file_location("make_weights", fixtures / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    INCEPTION = WORK / "inception_random.safetensors"
    if not INCEPTION.is_file():  # the fixture's random-weight Inception, rebuilt from its seed
        from safetensors.numpy import save_file

        weights = make_weights.make_weights(0)
        save_file({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}, str(INCEPTION))
    REF = WORK / "ref_builtin64.npz"
    if not REF.is_file():
        arjax_cmd("eval", "ref", "--source", "builtin:20", "--size", 64, "--out", REF)
else:
    INCEPTION, REF = WORK / "pt_inception-2015-12-05-6726825d.pth", WORK / "VIRTUAL_imagenet256_labeled.npz"
    for path, url in [(INCEPTION, "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"),
                      (REF, "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/")]:
        if not path.is_file():
            print(f"downloading {url + path.name}")
            urllib.request.urlretrieve(url + path.name, path)
print(f"Inception {INCEPTION}\nreference {REF}")

# %% [markdown]
# ## `arjax eval fid`
#
# Samples are drawn class-balanced and go straight into Inception features, batch by batch (50,000
# images are never held in memory); each batch is written to the run directory, so a killed run
# resumes. The output directory gets `report.json` (metrics, every setting, versions, timings) and
# `grid.png`. `--resize tf1` (the default) is the ADM graph's own resize, what papers' numbers use.

# %%
RUN = WORK / f"fid_cfg1.5_{NUM}"
arjax_cmd("eval", "fid", "--checkpoint", MODEL, "--ref", REF, "--inception", INCEPTION, "--num", NUM, "--cfg", 1.5,
          "--top-k", SAMPLING["top_k"], "--top-p", SAMPLING["top_p"], "--seed", SAMPLING["seed"], *KNOBS,
          "--out", RUN)
report = json.loads((RUN / "report.json").read_text())

# %% [markdown]
# What was scored (the first samples of a few classes) and the numbers: FID and sFID (lower is better:
# distances between Inception feature statistics of samples and reference), Inception Score (higher:
# confident and varied class predictions), precision (share of samples that look like real images) and
# recall (share of the real images' variety the samples cover).

# %%
grid = plt.imread(RUN / "grid.png")
plt.figure(figsize=(8, min(12, 8 * grid.shape[0] / grid.shape[1])))
plt.imshow(grid)
plt.axis("off")
plt.title(f"{report['settings']['num']} samples scored; the first of a few classes")
plt.show()

fig, ax = plt.subplots(figsize=(4, 3))
ax.bar(["precision", "recall"], [report["precision"], report["recall"]], color=["tab:blue", "tab:orange"])
ax.set_ylim(0, 1)
ax.set_title(f"FID {report['fid']:.2f}   sFID {report['sfid']:.2f}   IS {report['inception_score']:.1f}", fontsize=10)
plt.tight_layout()
plt.show()
print({k: report[k] for k in ("fid", "sfid", "inception_score", "precision", "recall")})

# %% [markdown]
# ## FID against the guidance scale
#
# The same pieces from Python: sample, take Inception features, compare statistics. Fewer samples per
# point than the protocol (`SWEEP_NUM`), so the curve compares settings with each other and not with
# papers. Guidance trades variety (recall) for typicality: FID is usually lowest at a moderate cfg.

# %%
from arjax.eval import fid
from arjax.eval.fid.evaluate import balanced_labels, reference_features
from arjax.sample.bulk import to_pixels

pipe = arjax.load(MODEL)
net = fid.Inception.from_file(INCEPTION, resize="tf1", batch_size=10 if TINY else 50)
ref = reference_features(fid.open_batch(REF), net)  # cached by the command above: its statistics
labels = balanced_labels(SWEEP_NUM, pipe.cfg.num_classes)
points = []
for cfg in SWEEP_CFG:
    pool3 = []
    for s in range(0, SWEEP_NUM, 250):
        images = pipe.sample(labels[s:s + 250], cfg=cfg, first_index=s, **SAMPLING)
        pool3.append(net(to_pixels(images))["pool3"])
    pool3 = np.concatenate(pool3)
    points.append((fid.frechet_distance(fid.statistics(pool3), ref["pool3_stats"]),
                   fid.inception_score(pool3, net.softmax_w, split_size=min(5000, SWEEP_NUM))))
    print(f"cfg {cfg}: FID {points[-1][0]:.2f}, IS {points[-1][1]:.1f} ({SWEEP_NUM} samples)")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(SWEEP_CFG, [p[0] for p in points], "o-", color="tab:blue")
ax.set(xlabel="cfg", ylabel=f"FID ({SWEEP_NUM} samples)")
ax2 = ax.twinx()
ax2.plot(SWEEP_CFG, [p[1] for p in points], "s--", color="tab:orange")
ax2.set_ylabel("Inception Score", color="tab:orange")
plt.title("guidance: FID (left) and Inception Score (right)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## More
#
# * Score any system's samples in ADM's format, e.g. the official PyTorch code's:
#   `arjax eval fid --npz samples.npz --ref VIRTUAL_imagenet256_labeled.npz --inception pt_inception-....pth`.
# * A tokenizer's rFID, PSNR and SSIM against ImageNet validation: `arjax eval ref --source
#   imagenet2012:validation --size 256 --out val256.npz`, then `arjax eval recon --checkpoint MODEL --ref val256.npz
#   --inception ...`.
# * The protocol traps (cfg 1.5 vs 2.0, 50k vs 10k samples, rFID against validation, not VIRTUAL) are
#   in the README's "Measure FID the way papers do".
