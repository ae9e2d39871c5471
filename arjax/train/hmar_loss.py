"""HMAR's training loss: weighted next-scale CE plus the masked branch's CE on masked positions.

Masks follow MaskGIT: one ratio per batch r = cos(pi/2 * u), u ~ U(0, 1); scale k of every sample
masks max(1, round(r * n_k)) positions chosen uniformly at random.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax.ops import scales
from arjax.train.losses import token_cross_entropy, top1_hits, var_metrics


def scale_token_weights(patch_nums, scheme: str = "uniform", *, mu: float = -0.5, sigma: float = 0.5) -> np.ndarray:
    """Per-token loss weights (L,) summing to 1.

    "uniform": 1/L per token (VAR). "lognormal": scale k gets w_k proportional to the LogNormal(mu, sigma)
    density at x_k = (k + 1) / K, spread evenly over its n_k tokens. The paper reweights scales with a
    lognormal; we could not read its exact definition, so this placement and the defaults (mode
    exp(mu - sigma^2) ~ 0.47: the middle of the schedule) are ours.
    """
    lens = np.asarray(scales.scale_lens(patch_nums), np.float64)
    if scheme == "uniform":
        return np.full(int(lens.sum()), 1.0 / lens.sum())
    if scheme != "lognormal":
        raise ValueError(f"scale weights must be 'uniform' or 'lognormal'; got {scheme!r}")
    if sigma <= 0:
        raise ValueError(f"lognormal sigma must be > 0; got {sigma}")
    x = np.arange(1, len(lens) + 1) / len(lens)
    density = np.exp(-(np.log(x) - mu) ** 2 / (2 * sigma ** 2)) / (x * sigma * math.sqrt(2 * math.pi))
    w = density / density.sum()
    return np.repeat(w / lens, lens.astype(int))


def config_token_weights(cfg) -> np.ndarray:
    """The weights an HMARConfig asks for."""
    return scale_token_weights(cfg.patch_nums, cfg.scale_weights, mu=cfg.lognormal_mu, sigma=cfg.lognormal_sigma)


def mask_counts(ratio, scale_lens):
    """Masked positions per scale: max(1, round(ratio * n_k)), int32 (K,)."""
    n = jnp.asarray(scale_lens, jnp.float32)
    return jnp.maximum(1, jnp.round(ratio * n)).astype(jnp.int32)


def draw_masks(key, batch: int, scale_lens):
    """(B, L) bool mask (True = masked) and the batch's ratio r; deterministic given key."""
    k_ratio, k_pos = jax.random.split(key)
    ratio = jnp.cos(0.5 * jnp.pi * jax.random.uniform(k_ratio, ()))
    counts = mask_counts(ratio, scale_lens)
    scores = jax.random.uniform(k_pos, (batch, sum(scale_lens)))
    masked, s = [], 0
    for k, n in enumerate(scale_lens):  # the counts[k] lowest scores of each scale are masked
        rank = jnp.argsort(jnp.argsort(scores[:, s:s + n], axis=-1), axis=-1)
        masked.append(rank < counts[k])
        s += n
    return jnp.concatenate(masked, axis=1), ratio


def _lens_for(weights, scale_lens):
    """The scales a weight vector covers (a prefix, for progressive training)."""
    n, out = len(weights), []
    for ln in scale_lens:
        if sum(out) >= n:
            break
        out.append(ln)
    if sum(out) != n:
        raise ValueError(f"{n} token weights do not cover whole scales of {tuple(scale_lens)}")
    return tuple(out)


def hmar_loss_terms(logits, mask_logits, tokens, masked, weights, scale_lens, *, mask_weight: float = 1.0,
                    label_smoothing: float = 0.0):
    """The loss from both branches' logits (B, L, V); mask_logits may be None (no masked branch).

    Next-scale: sum_i w_i CE_i, mean over the batch. Masked: masked position i of scale k gets
    w_i * n_k / m_k (m_k: masked count), so each scale keeps its weight whatever its mask ratio."""
    weights = jnp.asarray(weights, jnp.float32)
    ce = token_cross_entropy(logits, tokens, label_smoothing)
    loss_next = jnp.mean(jnp.sum(ce * weights, axis=-1))
    metrics = {"loss_next": loss_next, **var_metrics(logits, tokens, scale_lens[-1])}
    if mask_logits is None:
        return loss_next, {"loss": loss_next, **metrics}
    factors, s = [], 0
    for n in scale_lens:
        m = jnp.sum(masked[:, s:s + n], axis=-1, keepdims=True)
        factors.append(jnp.broadcast_to(n / jnp.maximum(m, 1), (masked.shape[0], n)))
        s += n
    w_mask = jnp.where(masked, weights * jnp.concatenate(factors, axis=1), 0.0)
    ce_mask = token_cross_entropy(mask_logits, tokens, label_smoothing)
    loss_mask = jnp.mean(jnp.sum(ce_mask * w_mask, axis=-1))
    hit = top1_hits(mask_logits, tokens) & masked
    loss = loss_next + mask_weight * loss_mask
    return loss, {"loss": loss, "loss_mask": loss_mask, **metrics,
                  "mask_acc": 100 * jnp.sum(hit) / jnp.maximum(jnp.sum(masked), 1)}


def hmar_loss(model, tokens, var_input, labels, key, *, weights, mask_weight: float = 1.0,
              label_smoothing: float = 0.0):
    """model: HMAR; tokens (B, L) int; var_input as VAR's; labels (B,) after class dropout; weights (L',)
    token weights (L' < L trains the first scales only). Returns (loss, metrics)."""
    lens = _lens_for(weights, model.cfg.scale_lens)
    tokens = tokens[:, :sum(lens)]
    if not model.cfg.mask_blocks:
        logits = model(labels, var_input, num_scales=len(lens))
        return hmar_loss_terms(logits, None, tokens, None, weights, lens, label_smoothing=label_smoothing)
    masked, ratio = draw_masks(key, tokens.shape[0], lens)
    logits, mask_logits = model.both_logits(labels, var_input, tokens, masked, num_scales=len(lens))
    loss, metrics = hmar_loss_terms(logits, mask_logits, tokens, masked, weights, lens,
                                    mask_weight=mask_weight, label_smoothing=label_smoothing)
    return loss, {**metrics, "mask_ratio": ratio}
