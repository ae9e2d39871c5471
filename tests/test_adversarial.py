"""Tokenizer training extras: GAN losses against NumPy, the discriminator's own optimiser step, and a
tokenizer run with discriminator and LPIPS switched on."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.train.losses import disc_loss, generator_adv_loss

REPO = Path(__file__).resolve().parents[1]
TINY = ["tokenizer.ch_mult=(1,2)", "tokenizer.patch_nums=(1,2,4)", "tokenizer.vocab_size=64",
        "tokenizer.z_channels=8", "batch_size=4", "log_every=1", "sample_every=0", "optim.warmup_steps=1",
        "disc.ch=8", "disc.num_layers=1"]


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_gan_losses_match_numpy():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3, 4, 4)) * 2, rng.normal(size=(3, 4, 4)) * 2
    r32, f32 = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
    hinge = 0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean())
    ns = 0.5 * (_softplus(-real).mean() + _softplus(fake).mean())  # -log sigmoid(r) - log(1 - sigmoid(f))
    np.testing.assert_allclose(float(disc_loss(r32, f32, "hinge")), hinge, rtol=1e-6)
    np.testing.assert_allclose(float(disc_loss(r32, f32, "non_saturating")), ns, rtol=1e-6)
    np.testing.assert_allclose(float(generator_adv_loss(f32, "hinge")), -fake.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(generator_adv_loss(f32, "non_saturating")), _softplus(-fake).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="disc.loss"):
        disc_loss(r32, f32, "wasserstein")


def _task(extra=()):
    from arjax.train.tasks import TokenizerTask
    return TokenizerTask(load_config(str(REPO / "configs" / "quickstart.py") + ":tokenizer",
                                     [*TINY, "disc.weight=0.5", "disc.start=3", "disc.lr=1e-3", *extra]))


def test_discriminator_learns_only_after_start():
    """Its own optimiser: untouched before disc.start, then it learns to tell real from fake."""
    task = _task()
    extra = task.init_extra()
    rng = np.random.default_rng(0)
    s = task.image_size
    aux = {"real": jnp.asarray(rng.uniform(0.5, 1, (4, s, s, 3)), jnp.float32),   # bright vs dark images
           "fake": jnp.asarray(rng.uniform(-1, -0.5, (4, s, s, 3)), jnp.float32)}
    update = jax.jit(task._disc_update)
    same, metrics = update(extra, aux, jnp.asarray(2))
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(extra)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    losses = []
    for step in range(3, 40):
        extra, metrics = update(extra, aux, jnp.asarray(step))
        losses.append(float(metrics["disc_loss"]))
    assert losses[0] == pytest.approx(float(update(task.init_extra(), aux, jnp.asarray(3))[1]["disc_loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_tokenizer_trains_with_discriminator(tmp_path):
    from arjax.train.trainer import train
    task_cfg = [*TINY, "steps=6", "disc.weight=0.5", "disc.start=2", "checkpoint.every=3"]
    cfg = load_config(str(REPO / "configs" / "quickstart.py") + ":tokenizer", task_cfg)
    s = train(cfg, tmp_path / "run", progress=False)
    hist = s["history"]
    # before disc.start the step is compiled without the discriminator; from it on, both losses are reported
    assert s["finished"] and [("disc_loss" in h) for h in hist] == [h["step"] > 2 for h in hist]
    assert all(np.isfinite([h["adv"], h["disc_loss"]]).all() for h in hist if h["step"] > 2)
    # a resumed run restores the discriminator and its optimiser from the checkpoint
    from arjax.train.checkpoint import RunCheckpointer
    assert RunCheckpointer(tmp_path / "run" / "checkpoints").latest_step() == 6


def test_perceptual_loss_needs_its_weight_files_and_16px():
    with pytest.raises(ValueError, match="loss.lpips_vgg"):
        _task(["loss.perceptual=1.0"])
    with pytest.raises(ValueError, match="at least 16 px"):  # the tiny tokenizer makes 8 px images
        _task(["loss.perceptual=1.0", "loss.lpips_vgg=a.pth", "loss.lpips_lin=b.pth"])
