"""VAR's next-scale sampling loop with classifier-free guidance and a KV cache.

Conditional and unconditional rows run as one batch of 2B. At scale k the guided logits are
(1 + t) * cond - t * uncond with the linear ramp t = cfg * k / (K - 1). The loop is unrolled over
the (static) scales, so one `jax.jit` compiles the whole sampler.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from arjax.nn.models.var import VAR
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE
from arjax.ops import scales
from arjax.sample.filters import gumbel_softmax, top_k_top_p_filter


def sample_next_scale(tokenizer: MultiScaleVQVAE, model: VAR, labels, keys, *, cfg: float = 1.5,
                      top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                      forced_tokens=None, forced_mask=None):
    """labels (B,), keys (B,) one PRNG key per sample -> images (B, H, W, 3) in [0, 1], tokens (B, L)
    int32, and the top-2 guided logits at every position (B, L, 2).

    Each sample draws only from its own key, so a sample does not depend on its batch-mates or on
    how a large request is split into batches.

    `more_smooth` replaces the hard token by a Gumbel-softmax mixture of codes (VAR's visual option,
    not used for FID).

    `forced_tokens` / `forced_mask` (B, L): zero-shot editing. Where the mask is set, the drawn token is
    replaced by the forced one before it feeds the next scale (teacher forcing of the known region).
    """
    mcfg = model.cfg
    pns, b = mcfg.patch_nums, labels.shape[0]
    n = len(pns)
    uncond = jnp.full_like(labels, mcfg.num_classes)
    cond = model.class_cond(jnp.concatenate([labels, uncond]))
    lvl_pos = model.lvl_pos()
    bounds = scales.begin_ends(pns)
    x = model.sos(cond) + lvl_pos[:, : bounds[0][1]]
    f_hat = jnp.zeros((b, pns[-1], pns[-1], mcfg.cvae), jnp.float32)
    caches, tokens, top2 = None, [], []
    codebook = tokenizer.quantize.embedding[...]
    for si, pn in enumerate(pns):
        ratio = si / (n - 1)
        # queries of this scale see every cached key and themselves: no mask needed
        h, caches = model.run_blocks(x, cond, caches=caches, mask="none", impl=mcfg.attn_impl)
        logits = model.logits_from_hidden(h, cond)
        t = cfg * ratio
        logits = (1 + t) * logits[:b] - t * logits[b:]
        top2.append(jax.lax.top_k(logits, 2)[0])
        logits = top_k_top_p_filter(logits, top_k, top_p)
        step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, si)))(keys)
        idx = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, axis=-1))(step_keys[:, 0], logits)
        idx = idx.astype(jnp.int32)
        cur = slice(*bounds[si])
        if forced_mask is not None:
            idx = jnp.where(forced_mask[:, cur], forced_tokens[:, cur], idx)
        tokens.append(idx)
        if more_smooth:
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            soft = jax.vmap(lambda k, lg: gumbel_softmax(k, lg, tau))(step_keys[:, 1], logits * (1 + ratio))
            emb = soft @ codebook
            if forced_mask is not None:
                emb = jnp.where(forced_mask[:, cur, None], jnp.take(codebook, idx, axis=0), emb)
        else:
            emb = jnp.take(codebook, idx, axis=0)
        f_hat, nxt = tokenizer.quantize.next_input(si, f_hat, emb.reshape(b, pn, pn, -1))
        if si != n - 1:
            s, e = bounds[si + 1]
            x = model.embed_words(nxt.reshape(b, -1, mcfg.cvae), pns[si + 1:si + 2]) + lvl_pos[:, s:e]
            x = jnp.concatenate([x, x], axis=0)
    images = (tokenizer.fhat_to_img(f_hat) + 1) * 0.5
    return images, jnp.concatenate(tokens, axis=1), jnp.concatenate(top2, axis=1)
