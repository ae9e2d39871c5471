"""Losses of the tokenizer and the AR transformer, and the reference's training metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp


class NonFiniteLoss(RuntimeError):
    """A training step produced a NaN/inf loss or gradient."""


def token_cross_entropy(logits, targets, label_smoothing: float = 0.0):
    """Per-token CE (..., V) x (...) -> (...), float32; smoothing as torch's `label_smoothing`:
    target distribution (1 - ls) one-hot + ls / V uniform."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        return (1 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return nll


def top1_hits(logits, targets):
    """(..., V) x (...) -> bool: the target's logit is the largest. Same as argmax == target but for
    exact ties (then any of the tied maxima counts); a max reduction, which the cross-entropy's
    log-softmax computes anyway, where XLA:CPU runs an argmax as a second, slow pass over the logits."""
    logits = logits.astype(jnp.float32)  # the same operand as the cross-entropy's, so its max is shared
    at_target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return at_target >= jnp.max(logits, axis=-1)


def var_metrics(logits, targets, last_len: int) -> dict:
    """The reference's logged metrics: mean and last-scale CE (no smoothing) and accuracy (%)."""
    ce = token_cross_entropy(logits, targets)
    hit = top1_hits(logits, targets).astype(jnp.float32) * 100
    return {"loss_mean": ce.mean(), "loss_tail": ce[:, -last_len:].mean(),
            "acc_mean": hit.mean(), "acc_tail": hit[:, -last_len:].mean()}


def vq_losses(f, f_hat, beta: float):
    """VQ-VAE losses on the accumulated f_hat: commitment (moves the encoder towards the codes) and
    codebook (moves codes and phi convs towards the encoder output)."""
    commit = jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - f))
    codebook = jnp.mean(jnp.square(f_hat - jax.lax.stop_gradient(f)))
    return beta * commit, codebook


def straight_through(f, f_hat):
    """Forward value f_hat, gradient of the identity w.r.t. f."""
    return f + jax.lax.stop_gradient(f_hat - f)


# ---- adversarial (tokenizer) -----------------------------------------------------------------------
def disc_loss(real_logits, fake_logits, kind: str = "hinge"):
    """Discriminator loss on patch logits: hinge (VQGAN) or non-saturating logistic."""
    if kind == "hinge":
        return 0.5 * (jnp.mean(jax.nn.relu(1 - real_logits)) + jnp.mean(jax.nn.relu(1 + fake_logits)))
    if kind == "non_saturating":
        return 0.5 * (jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits)))
    raise ValueError(f"disc.loss must be 'hinge' or 'non_saturating'; got {kind!r}")


def generator_adv_loss(fake_logits, kind: str = "hinge"):
    """The generator's side: raise the discriminator's logits on reconstructions."""
    if kind == "hinge":
        return -jnp.mean(fake_logits)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    raise ValueError(f"disc.loss must be 'hinge' or 'non_saturating'; got {kind!r}")
