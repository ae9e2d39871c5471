"""VAR's optional convolutional word embedding (model.embed_kernel) against a float64 NumPy convolution,
and the KV-cached sampler against teacher forcing when it is on."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import arjax
from arjax.nn.models.var import VAR, VARConfig
from arjax.nn.tokenizers.msvq import VQVAEConfig
from arjax.sample.next_scale import sample_next_scale

PNS = (1, 2, 3, 4)


def _conv_same_np(grid, kernel):
    """(B, H, W, Cin) x (k, k, Cin, Cout) -> (B, H, W, Cout), zero padding, float64 loops over taps."""
    k = kernel.shape[0]
    p = k // 2
    b, h, w, _ = grid.shape
    xp = np.pad(grid.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + h, j:j + w] @ kernel[i, j].astype(np.float64)
    return out


def test_conv_word_embedding_is_a_same_padded_convolution_of_each_scale():
    cfg = VARConfig(depth=1, embed_dim=16, num_heads=2, vocab_size=8, cvae=4, patch_nums=PNS, num_classes=3,
                    embed_kernel=3)
    model = VAR(cfg, rngs=nnx.Rngs(0))
    model.word_embed.bias[...] = jax.random.normal(jax.random.key(1), (16,))
    x = np.random.default_rng(0).normal(size=(2, sum(p * p for p in PNS[1:]), 4)).astype(np.float32)
    got = np.asarray(model.embed_words(jnp.asarray(x), PNS[1:]))
    kernel, bias = np.asarray(model.word_embed.kernel[...]), np.asarray(model.word_embed.bias[...])
    s = 0
    for pn in PNS[1:]:  # every scale on its own: no cell sees another scale's cells
        want = _conv_same_np(x[:, s:s + pn * pn].reshape(2, pn, pn, 4), kernel) + bias
        np.testing.assert_allclose(got[:, s:s + pn * pn], want.reshape(2, pn * pn, 16), atol=1e-5, rtol=1e-5)
        s += pn * pn


def test_kv_cache_equals_teacher_forcing_with_a_conv_embedding():
    """The sampler embeds one scale's grid at a time, teacher forcing all scales at once: their top-2
    logits on the same tokens must agree (cfg 0)."""
    tok = VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=PNS)
    model = VARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=PNS, num_classes=10,
                      init_adaln_gamma=0.5, init_head=1.0, embed_kernel=3)
    pipe = arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(model)})
    labels = np.array([1, 7, 3])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
    _, tokens, top2 = jax.jit(lambda ts, ms: sample_next_scale(
        nnx.merge(pipe.tokenizer.graphdef, ts), nnx.merge(pipe.graphdef, ms), jnp.asarray(labels), keys,
        cfg=0.0, top_k=0, top_p=0.0))(pipe.tokenizer.state, pipe.state)
    tf = np.asarray(pipe.logits(np.asarray(tokens), labels))
    np.testing.assert_allclose(np.asarray(top2), -np.sort(-tf, axis=-1)[..., :2], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [0, 2, -1])
def test_even_or_non_positive_embedding_kernels_are_refused(size):
    with pytest.raises(ValueError, match="embed_kernel"):
        VARConfig(depth=1, embed_kernel=size)


def test_flexvar_refuses_a_conv_embedding():
    from arjax.nn.models.flexvar import FlexVARConfig
    with pytest.raises(ValueError, match="embed_kernel"):
        FlexVARConfig(depth=1, embed_kernel=3)
