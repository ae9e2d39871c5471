"""LlamaGen's raster-order sampling loop (`generate`) with classifier-free guidance and a KV cache.

One `jax.lax.scan` over the image positions: step t feeds the class token (t = 0) or token t-1 at
position t and draws token t, so the whole loop compiles once whatever the sequence length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from arjax.nn.models.llamagen import LlamaGen
from arjax.nn.tokenizers.flexvq import FlexVQVAE
from arjax.sample.filters import check_forced, draw


def sample_raster(tokenizer: FlexVQVAE, model: LlamaGen, labels, keys, *, cfg: float = 4.0, cfg_interval: int = -1,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0, forced_tokens=None,
                  forced_mask=None):
    """labels (B,), keys (B,) one PRNG key per sample -> images (B, H, W, 3) in [0, 1], tokens (B, L)
    int32, and the top-2 guided logits (before temperature) at every position (B, L, 2).

    Guidance as LlamaGen: [cond; uncond] run as one batch of 2B (both fed the drawn token) and with
    cfg > 1 the logits are uncond + (cond - uncond) * cfg; token t is guided iff cfg_interval == -1 or
    t <= cfg_interval + 1, later tokens use the cond logits alone. `cfg` may be traced (one compiled
    sampler serves every scale), so the unconditional half always runs; with cfg <= 1 it is unused. Logits are divided by max(temperature, 1e-5), then filtered: top_k = 0 and
    top_p = 0 mean off (arjax's convention; top_p >= 1, LlamaGen's "off", is off too). top_k = 1 takes
    the argmax (no draw). Sample i draws token t from fold_in(keys[i], t) alone, so it does not depend
    on its batch-mates.

    forced_tokens / forced_mask (B, L): zero-shot editing. Where the mask is set, the drawn token is
    replaced by the forced one before it feeds the next step.
    """
    mcfg = model.cfg
    b, n = labels.shape[0], mcfg.block_size
    forced_tokens, forced_mask = check_forced(forced_tokens, forced_mask, b, n)
    labels = jnp.concatenate([labels, jnp.full_like(labels, mcfg.num_classes)])
    top_p = top_p if top_p < 1.0 else 0.0
    cls_x = model.embed_classes(labels)

    def body(carry, t):
        prev, caches = carry
        x = jnp.where(t == 0, cls_x, model.embed_tokens(prev[:, None]).astype(cls_x.dtype))
        logits, caches = model.step(x, t, caches)
        logits = logits[:, 0]
        cond, uncond = logits[:b], logits[b:]
        on = (cfg > 1.0) & ((cfg_interval == -1) | (t <= cfg_interval + 1))
        logits = jnp.where(on, uncond + (cond - uncond) * cfg, cond)
        top2 = jax.lax.top_k(logits, 2)[0]
        idx, _ = draw(keys, logits / max(temperature, 1e-5), top_k, top_p, t)
        idx = jnp.where(forced_mask[:, t], forced_tokens[:, t], idx)
        return (jnp.concatenate([idx, idx]), caches), (idx, top2)

    init = (jnp.zeros(labels.shape[0], jnp.int32), model.init_cache(labels.shape[0]))
    _, (tokens, top2) = jax.lax.scan(body, init, jnp.arange(n))
    tokens, top2 = tokens.T, jnp.swapaxes(top2, 0, 1)
    images = (tokenizer.decode(tokens, (mcfg.grid,)) + 1) * 0.5   # decode clips to [-1, 1]
    return images, tokens, top2
