"""HMAR: per-scale block-diagonal attention, the Markov property, mask drawing and loss, scale weights,
the masked-step sampler and a few training steps, each against an independent computation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.stats import lognorm

from arjax.nn.init import abstract_module, create
from arjax.nn.models.hmar import HMAR, HMARConfig
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
from arjax.ops import scales
from arjax.ops.attention import attention, dense_attention
from arjax.sample.hmar import fixed_counts, sample_hmar
from arjax.train.hmar_loss import (config_token_weights, draw_masks, hmar_loss, hmar_loss_terms,
                                   scale_token_weights)

PNS = (1, 2, 3, 4, 5, 6)
LENS = scales.scale_lens(PNS)
BOUNDS = scales.begin_ends(PNS)
V, CVAE, NCLS = 64, 8, 10


def _quick_jit(fn):
    """jax.jit compiled without backend optimisation: each function here runs a few times on tiny
    inputs, so compiling (2-3x faster this way) dominates."""
    cache = {}

    def call(*args):
        sig = str(jax.tree.map(lambda a: (a.shape, a.dtype), args))
        if sig not in cache:
            opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
            cache[sig] = jax.jit(fn).lower(*args).compile(compiler_options=opts)
        return cache[sig](*args)
    return call


def _jit(model, fn):
    """fn(model, *args), compiled (eager dispatch of every op is slow)."""
    graphdef, state = nnx.split(model)
    f = _quick_jit(lambda st, *a: fn(nnx.merge(graphdef, st), *a))
    return lambda *a: f(state, *a)


@pytest.fixture(scope="module")
def tok():
    return create(MultiScaleVQVAE, VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=V, z_channels=CVAE,
                                               patch_nums=PNS, using_sa=False, using_mid_sa=False), 0)


def _model_cfg(**kw):  # gamma/head gains large enough that blocks and heads matter
    kw = {"mask_blocks": 1, **kw}
    return HMARConfig(depth=2, embed_dim=32, num_heads=2, vocab_size=V, cvae=CVAE, patch_nums=PNS, num_classes=NCLS,
                      init_adaln_gamma=0.5, init_head=1.0, **kw)


@pytest.fixture(scope="module")
def var_input(tok):
    return _jit(tok, lambda t, idx: t.quantize.indices_to_var_input(idx))


@pytest.fixture(scope="module")
def model():
    return create(HMAR, _model_cfg(), 0)


@pytest.fixture(scope="module")
def branches(model):
    """(labels, var_input, tokens, masked) -> (next-scale logits, masked-branch logits), compiled once."""
    return _jit(model, lambda m, lb, x, t, mk: (m(lb, x), m.masked_logits(lb, x, t, mk)))


def _rand_tokens(seed, b):
    return jax.random.randint(jax.random.key(seed), (b, sum(LENS)), 0, V)


# ---- (a) attention -------------------------------------------------------------------------------
def _np_masked_attention(q, k, v, mask, scale):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("lens", [(1, 4, 9, 16, 25), (7,), (2, 5, 1, 6)])
def test_block_diagonal_per_scale_equals_masked_dense(lens):
    length, scale = sum(lens), 0.3
    q, k, v, ct = (jax.random.normal(jax.random.key(i), (2, length, 2, 8)) for i in range(4))
    mask = jnp.asarray(scales.block_diagonal_mask(lens))
    fast = lambda q, k, v: attention(q, k, v, scale_lens=lens, mask="block_diagonal", impl="xla", scale=scale)
    dense = lambda q, k, v: dense_attention(q, k, v, mask, scale=scale)
    out = _quick_jit(fast)(q, k, v)
    np.testing.assert_allclose(out, _np_masked_attention(q, k, v, np.asarray(mask), scale), atol=2e-6)
    np.testing.assert_allclose(out, _quick_jit(dense)(q, k, v), atol=2e-6)
    grads = lambda f: _quick_jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=(0, 1, 2)))(q, k, v)
    g_fast, g_dense = grads(fast), grads(dense)
    for a, b in zip(g_fast, g_dense):
        np.testing.assert_allclose(a, b, atol=2e-5)
    if len(lens) > 1:  # no L x L scores are formed
        assert f"{length},{length}]" not in str(jax.make_jaxpr(fast)(q, k, v))


# ---- (b) Markov property ---------------------------------------------------------------------------
def test_scale_logits_depend_only_on_own_scale(model, var_input, branches):
    labels, ks = jnp.array([1, 4, 7]), (0, 4)
    tokens, other = _rand_tokens(0, 3), _rand_tokens(1, 3)
    xin, xin_other = var_input(tokens), var_input(other)
    masked, _ = draw_masks(jax.random.key(0), 3, LENS)
    masked_other, _ = draw_masks(jax.random.key(1), 3, LENS)
    full, full_m = branches(labels, xin, tokens, masked)

    def alone(m, xin, tokens, masked):  # scales ks, each forwarded alone
        cond, out = m.class_cond(labels), []
        for k in ks:
            s, e = BOUNDS[k]
            x = m.scale_input(cond, k, None if k == 0 else xin[:, s - 1:e - 1])
            out.append((m.scale_logits(cond, x), m.scale_masked_logits(cond, x, tokens[:, s:e], masked[:, s:e])))
        return out

    for k, (nxt, msk) in zip(ks, _jit(model, alone)(xin, tokens, masked)):
        s, e = BOUNDS[k]
        np.testing.assert_allclose(nxt, full[:, s:e], atol=1e-5)
        np.testing.assert_allclose(msk, full_m[:, s:e], atol=1e-5)
        own = np.zeros(sum(LENS), bool)
        own[s:e] = True
        # every other scale's input (and, for the masked branch, tokens and mask) replaced: no change
        x2 = jnp.where(own[1:, None], xin, xin_other)
        t2, m2 = jnp.where(own, tokens, other), jnp.where(own, masked, masked_other)
        nxt2, msk2 = branches(labels, x2, t2, m2)
        np.testing.assert_allclose(nxt2[:, s:e], full[:, s:e], atol=1e-5)
        np.testing.assert_allclose(msk2[:, s:e], full_m[:, s:e], atol=1e-5)
        assert np.abs(nxt2 - full).max() > 1e-3  # while the other scales' logits do change


# ---- (c) masks and loss ------------------------------------------------------------------------------
def test_mask_counts_follow_the_cosine_ratio():
    for seed in range(5):
        key = jax.random.key(seed)
        masked, ratio = draw_masks(key, 4, LENS)
        u = float(jax.random.uniform(jax.random.split(key)[0], ()))
        r = np.cos(np.pi / 2 * u)
        assert abs(float(ratio) - r) < 1e-6
        m = np.asarray(masked)
        for (s, e), n in zip(BOUNDS, LENS):
            np.testing.assert_array_equal(m[:, s:e].sum(-1), max(1, round(r * n)))
        np.testing.assert_array_equal(m, np.asarray(draw_masks(key, 4, LENS)[0]))  # deterministic
    a, b = (np.asarray(draw_masks(jax.random.key(9), 8, (100,))[0]) for _ in range(2))
    assert not (a[0] == a[1:]).all()  # positions differ between samples


def _np_loss(logits, mask_logits, tokens, masked, w, ls, mask_weight):
    def ce(lg):
        lg = np.asarray(lg, np.float64)
        logp = lg - lg.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
        return (1 - ls) * nll - ls * logp.mean(-1)
    next_ = (ce(logits) * w).sum(-1).mean()
    c, m, tot = ce(mask_logits), np.asarray(masked), 0.0
    for bi in range(c.shape[0]):
        for (s, e), n in zip(BOUNDS, LENS):
            sel = m[bi, s:e]
            tot += (c[bi, s:e][sel] * w[s:e][sel]).sum() * n / sel.sum()
    return next_ + mask_weight * tot / c.shape[0]


def test_loss_only_on_masked_positions_and_matches_numpy():
    b, ls, mw = 3, 0.1, 0.7
    w = scale_token_weights(PNS, "lognormal")
    tokens = _rand_tokens(2, b)
    logits, mlogits = (3 * jax.random.normal(jax.random.key(i), (b, sum(LENS), V)) for i in (3, 4))
    masked, _ = draw_masks(jax.random.key(5), b, LENS)
    loss_of = lambda lg, ml: hmar_loss_terms(lg, ml, tokens, masked, w, LENS, mask_weight=mw, label_smoothing=ls)[0]
    f = _quick_jit(loss_of)
    loss = float(f(logits, mlogits))
    np.testing.assert_allclose(loss, _np_loss(logits, mlogits, tokens, masked, w, ls, mw), rtol=1e-5)
    m = np.asarray(masked)
    unmasked = (*np.argwhere(~m)[3], 0)  # one logit of one unmasked position
    assert float(f(logits, mlogits.at[unmasked].add(5.0))) == loss
    g = np.abs(np.asarray(_quick_jit(jax.grad(loss_of, argnums=1))(logits, mlogits))).sum(-1)
    assert (g[~m] == 0).all() and (g[m] > 0).all()


def test_hmar_loss_is_both_branches_on_the_drawn_mask(model, var_input, branches):
    labels, tokens, key = jnp.array([0, 3, 5]), _rand_tokens(6, 3), jax.random.key(7)
    xin, w = var_input(tokens), scale_token_weights(PNS)
    loss, metrics = _jit(model, lambda m: hmar_loss(m, tokens, xin, labels, key, weights=w, mask_weight=0.5))()
    masked, _ = draw_masks(key, 3, LENS)
    lg, ml = branches(labels, xin, tokens, masked)
    ref = _np_loss(lg, ml, tokens, masked, w, 0.0, 0.5)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert {"loss_next", "loss_mask", "mask_ratio", "mask_acc"} <= set(metrics)


def test_without_masked_branch():
    m = abstract_module(HMAR, _model_cfg(mask_blocks=0))
    assert m.mask_branch is None and m.mask_head is None and m.tok_embed is None
    with pytest.raises(ValueError, match="mask_blocks=0"):
        sample_hmar(None, m, jnp.array([1]), jax.random.key(0)[None], steps=(1, 1, 1, 1, 1, 2))
    with pytest.raises(ValueError, match="mask_blocks"):
        _model_cfg(mask_blocks=3)


@pytest.mark.slow
def test_loss_without_masked_branch_is_next_scale_only():
    m = create(HMAR, _model_cfg(mask_blocks=0), 0)
    tokens = _rand_tokens(8, 2)
    xin = jax.random.normal(jax.random.key(0), (2, sum(LENS) - 1, CVAE))
    loss, metrics = _jit(m, lambda m: hmar_loss(m, tokens, xin, jnp.array([1, 2]), jax.random.key(0),
                                                weights=scale_token_weights(PNS)))()
    np.testing.assert_allclose(float(loss), float(metrics["loss_next"]))
    assert "loss_mask" not in metrics


# ---- (d) scale weights ---------------------------------------------------------------------------------
def test_scale_weights_against_numpy():
    np.testing.assert_allclose(scale_token_weights(PNS, "uniform"), np.full(91, 1 / 91))
    for pns in (PNS, scales.VAR_SCHEDULES[256]):
        for mu, sigma in ((-0.5, 0.5), (0.2, 1.1)):
            w = scale_token_weights(pns, "lognormal", mu=mu, sigma=sigma)
            lens = np.array(scales.scale_lens(pns))
            pdf = lognorm.pdf(np.arange(1, len(pns) + 1) / len(pns), s=sigma, scale=np.exp(mu))
            np.testing.assert_allclose(w, np.repeat(pdf / pdf.sum() / lens, lens), rtol=1e-12)
            assert abs(w.sum() - 1) < 1e-12
    cfg = _model_cfg(scale_weights="lognormal", lognormal_mu=0.1, lognormal_sigma=0.8)
    np.testing.assert_array_equal(config_token_weights(cfg), scale_token_weights(PNS, "lognormal", mu=0.1, sigma=0.8))
    with pytest.raises(ValueError):
        scale_token_weights(PNS, "linear")


# ---- (e) sampler -----------------------------------------------------------------------------------------
def _sample(tok, model, labels, seed, **kw):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(labels)))
    (tg, ts), (mg, ms) = nnx.split(tok), nnx.split(model)
    f = _quick_jit(lambda ts, ms: sample_hmar(nnx.merge(tg, ts), nnx.merge(mg, ms), jnp.asarray(labels), keys, **kw))
    return f(ts, ms)


def test_fixed_counts_cosine_plan():
    assert fixed_counts(36, 4) == (3, 11, 23, 36)  # 36 - floor(36 cos(pi/8 j))
    assert fixed_counts(9, 1) == (9,) and fixed_counts(1, 3) == (1, 1, 1)
    assert fixed_counts(4, 4) == (1, 2, 3, 4)


def _check_top2_is_teacher_forced(labels, tokens, top2, var_input, branches):
    """cfg 0: the guided top-2 are those of the next-scale logits on the final tokens (Markov inputs)."""
    tf = branches(jnp.asarray(labels), var_input(tokens), tokens, jnp.zeros(tokens.shape, bool))[0]
    np.testing.assert_allclose(top2, -np.sort(-np.asarray(tf), -1)[..., :2], atol=2e-5, rtol=1e-5)


def test_one_step_sampler(tok, model, var_input, branches):
    labels = np.array([1, 5, 9])
    img, tokens, top2, counts = _sample(tok, model, labels, 0, cfg=0.0)
    assert img.shape == (3, 12, 12, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert [c.shape for c in counts] == [(3, 1)] * len(PNS)
    for c, n in zip(counts, LENS):
        np.testing.assert_array_equal(c[:, 0], n)
    _check_top2_is_teacher_forced(labels, tokens, top2, var_input, branches)


def test_one_step_sampler_with_a_conv_embedding(tok, var_input):
    """model.embed_kernel > 1: the sampler embeds one scale's grid at a time, teacher forcing all at once."""
    conv = create(HMAR, _model_cfg(embed_kernel=3), 0)
    branches = _jit(conv, lambda m, lb, x, t, mk: (m(lb, x), m.masked_logits(lb, x, t, mk)))
    labels = np.array([2, 4])
    _, tokens, top2, _ = _sample(tok, conv, labels, 1, cfg=0.0)
    _check_top2_is_teacher_forced(labels, tokens, top2, var_input, branches)


def test_sampler_honours_schedule_and_forced_tokens(tok, model, var_input, branches):
    steps, b, labels = (1, 1, 2, 2, 3, 4), 3, [2, 3, 4]
    forced_tokens = _rand_tokens(11, b)
    forced = np.array(jax.random.bernoulli(jax.random.key(12), 0.3, (b, sum(LENS))))
    forced[0] = False  # sample 0 is unconstrained
    img, tokens, top2, counts = _sample(tok, model, labels, 1, steps=steps, cfg=0.0, top_k=20,
                                        forced_tokens=forced_tokens, forced_mask=jnp.asarray(forced))
    assert img.shape == (3, 12, 12, 3)
    np.testing.assert_array_equal(np.asarray(tokens)[forced], np.asarray(forced_tokens)[forced])
    _check_top2_is_teacher_forced(labels, tokens, top2, var_input, branches)
    for (s, e), n, st, c in zip(BOUNDS, LENS, steps, counts):
        c = np.asarray(c)
        assert c.shape == (b, st)
        plan = np.array(fixed_counts(n, st))
        f = forced[:, s:e].sum(-1)
        np.testing.assert_array_equal(c.sum(-1), n - f)  # every unforced token fixed exactly once
        np.testing.assert_array_equal(np.cumsum(c, -1) + f[:, None], np.maximum(plan[None], f[:, None]))
    assert counts[5][0].tolist() == [3, 8, 12, 13]


# ---- (f) training ------------------------------------------------------------------------------------------
def test_training_steps_lower_the_loss(model, var_input):
    labels, tokens = jnp.arange(8) % NCLS, _rand_tokens(13, 8)
    xin, w = var_input(tokens), scale_token_weights(PNS, "lognormal")
    graphdef, params = nnx.split(model)
    opt = optax.adamw(5e-3, b1=0.9, b2=0.95, weight_decay=0.05)

    def loss_fn(p, key):
        return hmar_loss(nnx.merge(graphdef, p), tokens, xin, labels, key, weights=w)[0]

    @_quick_jit
    def step(p, o, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    o, probe = opt.init(params), jax.random.key(100)  # one fixed mask to compare on
    before = float(step(params, o, probe)[2])
    for i in range(12):
        params, o, _ = step(params, o, jax.random.key(i))
    after = float(step(params, o, probe)[2])
    assert np.isfinite(after) and after < 0.85 * before, (before, after)
