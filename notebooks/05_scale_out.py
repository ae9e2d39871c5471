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
# # Scale out: plan a TPU slice before paying for it
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/05_scale_out.ipynb)
#
# The same config trains on one CPU, one GPU or a multi-host TPU slice; only the device mesh and the
# launch change. Before renting a slice, `arjax plan` compiles the real train step for it **ahead of
# time, on this machine** (no TPU needed, nothing allocated) and reports, per chip, what the state and
# the step's temporaries take against the chip's memory, and whether it fits. This notebook
#
# 1. plans a run on fake CPU devices and on a TPU topology, and draws the memory as a bar chart,
# 2. explains how to read the memory table,
# 3. prints the commands that create a slice and launch the run on it.

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
# At `SIZE = "full"` the notebook plans the ImageNet VAR-d16 recipe (`configs/imagenet.py:d16`) on a
# v5e-16 slice, with and without rematerialisation: two TPU compiles of about 2 and 10 minutes on a
# 2-core CPU. TPU topologies need libtpu (`pip install -e ".[tpu]"`; the cell below installs it when
# missing). The test suite runs the notebook with `ARJAX_NOTEBOOK_SIZE=tiny`: the same recipe at its tiny
# size (`configs/imagenet.py:d16:tiny`: 2 layers, a 16 px tokenizer layout, batch 4), planned on 4 fake
# CPU devices and on a 2x2 v5e topology, each in seconds. Nothing is written to disk.

# %%
SIZE = os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")  # "full" or "tiny" (CI)
assert SIZE in ("full", "tiny"), SIZE
TINY = SIZE == "tiny"

import importlib.util
import json

import matplotlib.pyplot as plt

import arjax.config

CONFIG = f"{REPO / 'configs' / 'imagenet.py'}:d16{':tiny' if TINY else ''}"  # the ImageNet VAR-d16 recipe
TOPOLOGY = "v5e:2x2" if TINY else "v5e-16"  # the recipe's slice (its plan.topology); 4 chips for the tiny batch
if not TINY and importlib.util.find_spec("libtpu") is None:
    import jax
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"jax[tpu]=={jax.__version__}"], check=True)
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
print(f"SIZE={SIZE}: planning {CONFIG}; libtpu {'found' if HAVE_LIBTPU else 'missing: no TPU topologies'}")

# %% [markdown]
# ## Plans
#
# Each plan runs `arjax plan ... --json` in a fresh process: the number of fake devices, or the TPU
# topology, is fixed when JAX starts, so one kernel cannot switch between them. `--devices N` plans
# on N fake CPU devices (exact state sizes, indicative temporaries, no memory limit); `--topology`
# compiles for a real TPU slice and knows its HBM. `--mesh data=..,fsdp=..,tensor=..` chooses how the
# devices are used: batches split over `data x fsdp`, the state sharded over `fsdp` (FSDP), attention
# and MLP split over `tensor`.

# %%
from arjax.plan import Plan, format_plan


def plan(*args):
    """`arjax plan --config CONFIG ... --json` in a fresh process -> a Plan (raises with the plan's stderr)."""
    argv = ["plan", "--config", CONFIG, *map(str, args)]
    print("$ arjax " + " ".join(argv))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "arjax.cli", *argv, "--json"], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"arjax plan failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])["plan"]
    p = Plan(**{k: v for k, v in d.items() if k in Plan.__dataclass_fields__})
    print(format_plan(p, arjax.config.load_config(CONFIG)), "\n")
    return p


plans = {}
if TINY:
    plans["4 CPU devices, data=4\n(state replicated)"] = plan("--devices", 4, "--mesh", "data=4,fsdp=1,tensor=1")
    plans["4 CPU devices, fsdp=4\n(state sharded)"] = plan("--devices", 4, "--mesh", "data=1,fsdp=4,tensor=1")
if HAVE_LIBTPU:
    plans[f"{TOPOLOGY}\n{'fsdp=4' if TINY else 'the recipe (remat on)'}"] = plan("--topology", TOPOLOGY)
    if not TINY:
        plans[f"{TOPOLOGY}\nremat off"] = plan("--topology", TOPOLOGY, "--set", "model.remat=False")

# %% [markdown]
# ## Reading the memory table
#
# Per device (per chip on a TPU):
#
# * **parameters**, **optimiser state** (AdamW: two moments, so twice the parameters) and **EMA**: the
#   train state's share. FSDP divides it by the `fsdp` axis; with `data` only it is replicated.
# * **step arguments**: everything the compiled step reads: the state, the batch's rows and constants.
# * **step outputs**: what the step writes besides what it writes in place (the state is donated, so the
#   new state reuses its buffers: usually only the metrics).
# * **step temporaries**: activations kept for the backward pass, gradients, gathered FSDP weights,
#   attention scores. This is what `model.remat` (recompute activations in the backward pass), a smaller
#   per-chip batch, microbatches (`accum_steps`) or the block-sparse attention kernels shrink.
# * **peak**: arguments + outputs + temporaries, against the HBM XLA may use on the chip. A plan that
#   does not fit says how much it needs instead of failing; `--max-batch` then finds the largest per-chip
#   batch that fits, and `--variants` tabulates remat x attention implementation.

# %%
def parts(p: Plan) -> dict:
    if p.temp_bytes is None:  # did not compile: all the compiler said is what it needed
        return {"needed (did not fit)": p.needed_bytes or 0}
    other = p.argument_bytes - p.params_bytes - p.opt_bytes - p.ema_bytes
    return {"parameters": p.params_bytes, "optimiser state": p.opt_bytes, "EMA": p.ema_bytes,
            "batch + constants": max(other, 0), "outputs": p.output_bytes - p.alias_bytes,
            "temporaries": p.temp_bytes}


peak = max(p.peak_bytes for p in plans.values())
unit, unit_name = (2 ** 30, "GiB") if peak > 2 ** 30 else (2 ** 20, "MiB")
colours = {"parameters": "tab:blue", "optimiser state": "tab:cyan", "EMA": "tab:purple",
           "batch + constants": "tab:gray", "outputs": "tab:olive", "temporaries": "tab:orange",
           "needed (did not fit)": "tab:red"}
fig, ax = plt.subplots(figsize=(2.4 * len(plans) + 2, 4))
for x, (name, p) in enumerate(plans.items()):
    bottom = 0.0
    for part, value in parts(p).items():
        ax.bar(x, value / unit, bottom=bottom, color=colours[part], label=part)
        bottom += value / unit
    note = f"{p.peak_bytes / unit:.3g} {unit_name}"
    if p.usable_bytes:  # a TPU: the share of the HBM that XLA may use
        note += f"\n{100 * p.peak_bytes / p.usable_bytes:.2g}% of {p.usable_bytes / 2 ** 30:.4g} GiB HBM"
        if p.usable_bytes < 3 * peak:  # the chip's limit, where it is in the picture's range
            ax.hlines(p.usable_bytes / unit, x - 0.4, x + 0.4, colors="k", linestyles="--", label="usable HBM")
    ax.text(x, bottom, note, ha="center", va="bottom", fontsize=8)
handles, labels = ax.get_legend_handles_labels()
unique = dict(zip(labels, handles))  # one legend entry per part
ax.legend(unique.values(), unique.keys(), fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
ax.set_xticks(range(len(plans)), list(plans), fontsize=8)
ax.set_ylabel(f"{unit_name} per device")
ax.margins(y=0.2)
ax.set_title("what one device holds during a train step")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Launch
#
# `launch/tpu.py` wraps the gcloud commands of a TPU VM slice: create it, put arjax and `jax[tpu]` on
# every worker, start `arjax train` on all workers with a Cloud Storage bucket mounted as the workdir,
# read the logs, delete it. With `--dry-run` it prints the commands instead of running them (below);
# `launch/README.md` walks through a v5e-16 run. A preempted or failed run resumes by rerunning `run`:
# the checkpoint restores onto any mesh or process count.

# %%
slice_args = ["--name", "arjax-v5e", "--zone", "us-west4-a"]
for sub, extra in [("create", ["--accelerator", "v5litepod-16"]),
                   ("setup", ["--repo", "https://github.com/arjax/arjax"]),
                   ("run", ["--config", "configs/imagenet.py:d16", "--bucket", "gs://my-bucket/runs"]),
                   ("logs", ["--run-name", "imagenet_d16"]),
                   ("delete", [])]:
    print(f"# python launch/tpu.py {sub} {' '.join(slice_args + extra)}")
    r = subprocess.run([sys.executable, str(REPO / "launch" / "tpu.py"), "--dry-run", sub, *slice_args, *extra],
                       capture_output=True, text=True, check=True)
    print(r.stdout.strip(), "\n")

# %% [markdown]
# Several GPUs or CPU hosts take the coordinator from flags or the environment
# (`ARJAX_COORDINATOR=host0:1234 ARJAX_NUM_PROCESSES=2 ARJAX_PROCESS_ID=0 arjax train ...`;
# `launch/gpu_multinode.sh`), and `python launch/local.py --processes 2 --devices 4 -- arjax train ...`
# tries multi-host code on one machine.
