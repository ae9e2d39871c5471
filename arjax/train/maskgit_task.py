"""Training MaskGIT: masked token prediction on a one-scale VQ tokenizer's tokens.

Per sample, r ~ U[0, 1) sets the mask ratio gamma(r) = cos(pi/2 * r) (MaskGIT's cosine schedule, the one
its decoder follows); n = ceil(gamma * L) tokens, clamped to [1, L], are chosen uniformly at random and
replaced by [MASK]. The loss is the cross-entropy at the masked positions only, averaged over all masked
tokens of the batch (as MaskGIT's weighted mean), with label smoothing `loss.label_smoothing`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from arjax.train.generator_tasks import GeneratorTask, one_scale_fields
from arjax.train.losses import token_cross_entropy, top1_hits


def mask_counts(r, length: int):
    """r (B,) in [0, 1) -> tokens to mask per sample: ceil(cos(pi/2 * r) * length), clamped to [1, length]."""
    return jnp.clip(jnp.ceil(jnp.cos(jnp.pi / 2 * r) * length), 1, length).astype(jnp.int32)


def choose_positions(key, counts, length: int):
    """counts (B,) -> bool (B, length) with exactly counts[i] True per row, a uniformly random subset:
    the positions of the counts[i] smallest of length i.i.d. uniforms."""
    noise = jax.random.uniform(key, (counts.shape[0], length))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank < counts[:, None]


def random_mask(key, batch: int, length: int):
    """The training mask (B, length): a cosine-scheduled count of uniformly chosen positions per sample."""
    k_ratio, k_pos = jax.random.split(key)
    return choose_positions(k_pos, mask_counts(jax.random.uniform(k_ratio, (batch,)), length), length)


def masked_loss(logits, tokens, masked, label_smoothing: float = 0.0):
    """Mean cross-entropy over the masked tokens of the batch, and the accuracy (%) there."""
    w = masked.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(w), 1.0)
    ce = token_cross_entropy(logits, tokens, label_smoothing)
    acc = jnp.sum(top1_hits(logits, tokens) * w) / total * 100
    return jnp.sum(ce * w) / total, acc


class MaskGITTask(GeneratorTask):
    """MaskGIT: masked token prediction (see the module docstring). Class dropout replaces labels by the
    null class (model.num_classes) at rate loss.class_dropout (the base class does it)."""
    name = "maskgit"

    @classmethod
    def tokenizer_fields(cls, tok_cfg) -> dict:
        return one_scale_fields(cls.name, tok_cfg)

    def member_loss(self, model, tok, tokens, labels, key, step, phase, x_in=None):
        b, n = tokens.shape
        masked = random_mask(key, b, n)
        logits = model(labels, jnp.where(masked, self.model_cfg.mask_id, tokens))
        loss, acc = masked_loss(logits, tokens, masked, self.cfg.loss.label_smoothing)
        return loss, {"acc_mask": acc, "mask_ratio": jnp.mean(masked.astype(jnp.float32))}

    def sample_options(self) -> dict:
        s = self.cfg.sample
        return {"iterations": int(s.get("iterations", 8)),
                "choice_temperature": float(s.get("choice_temperature", 4.5)),
                "temperature": float(s.get("temperature", 1.0))}
