"""Training: losses, optimiser groups and schedule against independent computations; real steps
lower the loss; a SIGKILLed run resumes to bitwise the same parameters; a NaN stops the run cleanly."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.nn.init import create
from arjax.nn.models.var import VAR, VARConfig
from arjax.train.losses import NonFiniteLoss, straight_through, token_cross_entropy, vq_losses
from arjax.train.optim import decay_mask, var_schedule, wd_schedule

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ["tokenizer.ch_mult=(1,2)", "tokenizer.patch_nums=(1,2,4)", "tokenizer.vocab_size=64",
                  "tokenizer.z_channels=8", "batch_size=8", "log_every=1", "sample_every=0",
                  "sample.preview_classes=2", "sample.preview_per_class=1"]


# ---- losses ----------------------------------------------------------------------------------------
def test_token_cross_entropy_matches_float64_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)) * 3
    tgt = rng.integers(0, 11, size=(3, 7))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    got = token_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(tgt))
    np.testing.assert_allclose(np.asarray(got), nll, rtol=1e-5, atol=1e-5)
    # torch's label smoothing: target = (1 - ls) onehot + ls / V
    ls = 0.1
    target = (1 - ls) * np.eye(11)[tgt] + ls / 11
    ref = -(target * logp).sum(-1)
    got = token_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(tgt), ls)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_vq_losses_and_straight_through_gradients():
    rng = np.random.default_rng(1)
    f, fh = (jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32) for _ in range(2))
    commit, codebook = vq_losses(f, fh, 0.25)
    np.testing.assert_allclose(float(commit), 0.25 * np.mean((np.asarray(fh) - np.asarray(f)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(float(codebook), np.mean((np.asarray(fh) - np.asarray(f)) ** 2), rtol=1e-6)
    # commitment moves only f, codebook only f_hat
    g_f = jax.grad(lambda a: vq_losses(a, fh, 0.25)[0])(f)
    g_h = jax.grad(lambda b: vq_losses(f, b, 0.25)[0])(fh)
    np.testing.assert_allclose(np.asarray(g_f), 0.25 * 2 * (np.asarray(f) - np.asarray(fh)) / f.size, rtol=1e-5)
    assert float(jnp.abs(g_h).max()) == 0
    # straight-through: value of f_hat, gradient of identity in f
    st = straight_through(f, fh)
    np.testing.assert_allclose(np.asarray(st), np.asarray(fh), atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda a: straight_through(a, fh).sum())(f)), 1.0)


# ---- optimiser -------------------------------------------------------------------------------------
def test_weight_decay_groups_follow_the_reference():
    model = create(VAR, VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=32, cvae=8,
                                  patch_nums=(1, 2), num_classes=5, shared_aln=True))
    from flax import nnx
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = {".".join(map(str, k)): v for k, v in
            ((tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path), leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0])}
    decayed = {k for k, v in flat.items() if v}
    # the reference: no decay for 1-D tensors, biases, pos/level embeddings, ada_gss, scale_mul
    assert decayed == {"word_embed.kernel", "class_emb.embedding", "shared_ada_lin.kernel", "head.kernel",
                       "head_nm.ada_lin.kernel",
                       *(f"blocks.{i}.{n}" for i in range(2) for n in
                         ("attn.mat_qkv.kernel", "attn.proj.kernel", "ffn.fc1.kernel", "ffn.fc2.kernel"))}


def _reference_lr(sche, cur_it, wp_it, max_it, wp0=0.005, wpe=0.01):
    """VAR's lr_wd_annealing ('lin0' and 'lin<T>') transcribed as plain Python."""
    wp_it = round(wp_it)
    if cur_it < wp_it:
        return wp0 + (1 - wp0) * cur_it / wp_it
    pasd = (cur_it - wp_it) / (max_it - 1 - wp_it)
    rest = 1 - pasd
    if sche == "lin0":
        return 1 if pasd < 0.05 else wpe + (1 - wpe) * rest / 0.95
    t = float(sche[3:])
    mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2
    return 1 + (mid - 1) * pasd / t if pasd < t else wpe + (mid - wpe) * rest / (1 - t)


@pytest.mark.parametrize("sche,total,warm", [("lin0", 1000, 20), ("lin0", 250, 5), ("lin0", 90, 30),
                                             ("lin0.8", 1000, 20), ("lin0.5", 90, 30)])
def test_schedule_matches_reference(sche, total, warm):
    sched = var_schedule(3e-4, total, warm, kind=sche)
    steps = np.arange(total)
    got = np.asarray(jax.vmap(sched)(steps))
    ref = np.array([3e-4 * _reference_lr(sche, s, warm, total) for s in steps])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * 3e-4)  # float32 near the end of the decay
    assert got[-1] == pytest.approx(3e-4 * 0.01, rel=1e-4)


def test_weight_decay_schedule_matches_reference():
    total = 500
    wd = wd_schedule(0.05, 0.08, total)
    got = np.asarray(jax.vmap(wd)(np.arange(total)))
    ref = [0.08 + (0.05 - 0.08) * (0.5 + 0.5 * math.cos(math.pi * it / (total - 1))) for it in range(total)]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert wd_schedule(0.05, 0.05, total) == 0.05


# ---- real training ---------------------------------------------------------------------------------
def _tiny_cfg(steps, extra=()):
    return load_config(str(REPO / "configs" / "quickstart.py") + ":tokenizer",
                       [*TINY_TOKENIZER, f"steps={steps}", "checkpoint.every=3", "optim.warmup_steps=2", *extra])


def test_training_steps_lower_the_loss(tmp_path):
    """Per-batch training losses are noisy at batch 8, so judge on one fixed batch of 32 images:
    the trained tokenizer reaches less than 75% of the initial model's loss on them (measured 68%)."""
    from flax import nnx
    from arjax.data import SyntheticShapes
    from arjax.train.tasks import TokenizerTask
    from arjax.train.trainer import train
    cfg = _tiny_cfg(40, ["optim.warmup_steps=5", "optim.base_lr=8e-3"])
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["finished"] and len(s["history"]) == 40
    import arjax.train.checkpoint as ck
    assert ck.read_meta(s["model_dir"])["family"] == "msvq"
    task = TokenizerTask(cfg)
    source = SyntheticShapes(32, task.image_size, seed=123)
    x = jnp.asarray(np.stack([source[i]["image"] for i in range(32)]), jnp.float32) / 127.5 - 1
    consts, extra, key = task.constants(), task.init_extra(), jax.random.key(0)
    trained = _params_tree(tmp_path / "run")
    loss = jax.jit(task.loss)  # eagerly every op would compile on its own
    before, after = (float(loss(p, extra, consts, {"image": x}, key, jnp.asarray(0))[0])
                     for p in (task.init_params(cfg.seed), trained))
    assert after < 0.75 * before, (before, after)


def _run_cli(workdir, steps, env_extra=None):
    cmd = [sys.executable, "-m", "arjax.cli", "train", "--config", str(REPO / "configs" / "quickstart.py") + ":tokenizer",
           "--workdir", str(workdir)] + [a for s in [*TINY_TOKENIZER, f"steps={steps}", "checkpoint.every=3",
                                                     "optim.warmup_steps=2"] for a in ("--set", s)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env_extra or {})})


def _params_tree(workdir):
    from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
    from arjax.nn.init import abstract_params
    import arjax.train.checkpoint as ck
    meta = ck.read_meta(workdir / "model")
    abstract = {"tokenizer": abstract_params(MultiScaleVQVAE, VQVAEConfig(**meta["tokenizer"]))}
    return ck.load_params(workdir / "model", abstract)["tokenizer"]


def _params(workdir):
    return jax.tree.leaves(_params_tree(workdir))


def test_sigkill_then_rerun_reaches_the_same_parameters(tmp_path):
    steps = 12
    ref = _run_cli(tmp_path / "ref", steps)
    killed = _run_cli(tmp_path / "killed", steps)
    ckdir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:  # kill once a checkpoint exists, mid-run
        if ckdir.is_dir() and any(p.name.isdigit() and int(p.name) >= 3 for p in ckdir.iterdir()):
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stdout.read().decode()[-500:]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model").exists()
    resumed = _run_cli(tmp_path / "killed", steps)
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out[-2000:]
    assert "resuming" in out
    assert ref.wait(timeout=300) == 0
    for a, b in zip(_params(tmp_path / "ref"), _params(tmp_path / "killed")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_with_last_good_checkpoint_intact(tmp_path):
    from arjax.train.trainer import train
    # an absurd learning rate: step 1 is finite (and checkpointed), step 2 overflows
    cfg = _tiny_cfg(20, ["optim.base_lr=1e30", "optim.warmup_steps=0", "checkpoint.every=1"])
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        train(cfg, tmp_path / "nan", progress=False)
    with pytest.raises(ValueError, match="another config"):  # a workdir belongs to one config
        train(_tiny_cfg(20), tmp_path / "nan", progress=False)
    from arjax.train.checkpoint import RunCheckpointer
    ck = RunCheckpointer(tmp_path / "nan" / "checkpoints")
    step = ck.latest_step()
    assert step is not None and step >= 1
    path = ck.directory / str(step)
    assert path.is_dir() and not any(p.name.endswith(".orbax-checkpoint-tmp") for p in ck.directory.iterdir())


def test_remat_gives_the_same_loss_and_gradients():
    import dataclasses
    from flax import nnx
    from arjax.train.losses import token_cross_entropy
    cfg = VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=32, cvae=8, patch_nums=(1, 2, 3),
                    num_classes=5, init_adaln_gamma=0.3)
    params = nnx.to_pure_dict(nnx.state(create(VAR, cfg), nnx.Param))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 13, 8)), jnp.float32)
    y, tgt = jnp.asarray([1, 4]), jnp.asarray(rng.integers(0, 32, size=(2, 14)))
    out = []
    for remat in (False, True):
        gd = nnx.split(create(VAR, dataclasses.replace(cfg, remat=remat)))[0]
        loss = lambda p, gd=gd: token_cross_entropy(nnx.merge(gd, p)(y, x), tgt).mean()
        out.append(jax.jit(jax.value_and_grad(loss))(params))
    np.testing.assert_allclose(float(out[0][0]), float(out[1][0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
