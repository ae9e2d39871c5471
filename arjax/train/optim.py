"""VAR's optimisation recipe in optax: AdamW(0.9, 0.95) with decoupled weight decay on matrices only,
global-norm clipping, and the reference warmup + 'lin0' learning-rate schedule.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Names that never get weight decay in the reference (besides every 1-D tensor and every bias).
NO_DECAY_KEYS = ("pos_1LC", "pos_start", "lvl_embed", "ada_gss", "scale_mul", "gamma", "beta",
                 "cls_token", "start_token", "pos_embed", "start_pos", "cfg_uncond")


def decay_mask(params):
    """True where weight decay applies: >= 2-D tensors that are not biases or no-decay embeddings."""
    def rule(path, leaf):
        name = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        return bool(leaf.ndim > 1 and not name.endswith("bias") and not any(k in name for k in NO_DECAY_KEYS))
    return jax.tree_util.tree_map_with_path(rule, params)


def peak_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of the reference: lr = base_lr * batch / 256."""
    return base_lr * global_batch / 256


def var_schedule(peak: float, total_steps: int, warmup_steps: int, *, wp0: float = 0.005,
                 wpe: float = 0.01, kind: str = "lin0"):
    """VAR's `lr_wd_annealing`: linear warmup from wp0*peak, then
      'lin0':  flat for 5% of the rest, then linear decay to wpe*peak at the last step;
      'lin<T>' (e.g. 'lin0.8', what progressive training uses): linear decay to a midpoint over the
               first T of the rest, then linear to wpe*peak."""
    if not kind.startswith("lin"):
        raise ValueError(f"optim.schedule must be 'lin0' or 'lin<T>' (e.g. 'lin0.8'); got {kind!r}")
    flat = kind == "lin0"
    t = 0.05 if flat else float(kind[3:])
    warmup_steps = max(int(round(warmup_steps)), 0)
    span = max(total_steps - 1 - warmup_steps, 1)
    mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2  # the reference's wpe_mid for 'lin<T>'

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = wp0 + (1 - wp0) * step / max(warmup_steps, 1)
        done = (step - warmup_steps) / span
        if flat:
            decay = jnp.where(done < t, 1.0, wpe + (1 - wpe) * (1 - done) / (1 - t))
        else:
            decay = jnp.where(done < t, 1 + (mid - 1) * done / t, wpe + (mid - wpe) * (1 - done) / (1 - t))
        return peak * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def wd_schedule(start: float, end: float, total_steps: int):
    """The reference's weight decay: cosine from `start` to `end` over the run (constant if equal)."""
    if end == start:
        return start
    span = max(total_steps - 1, 1)
    return lambda step: end + (start - end) * (0.5 + 0.5 * jnp.cos(jnp.pi * jnp.asarray(step, jnp.float32) / span))


def make_optimizer(schedule, *, weight_decay=0.05, b1: float = 0.9, b2: float = 0.95,
                   grad_clip: float = 2.0, mask=decay_mask) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay, mask=mask))
    return optax.chain(*parts)
