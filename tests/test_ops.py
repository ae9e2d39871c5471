"""Unit tests of the numerical ops: PyTorch-exact resampling, scale schedules and masks, dense
attention, and the top-k / top-p logit filter. Every check compares against an independent
reference written here (float64 loops / NumPy) and, where available, against PyTorch itself."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.ops import attention as attn_ops
from arjax.ops import resample, scales
from arjax.sample.filters import top_k_top_p_filter
from reference.var_numpy import _cubic  # the Keys cubic kernel, A = -0.75

VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# =============================================================================================
# resampling
# =============================================================================================
def loop_area(x, oh, ow):
    """Adaptive average pooling, one output pixel at a time. x: (H, W, C) float64."""
    h, w = x.shape[:2]
    out = np.zeros((oh, ow) + x.shape[2:])
    for i in range(oh):
        h0, h1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            w0, w1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            acc = 0.0
            for y in range(h0, h1):
                for xx in range(w0, w1):
                    acc = acc + x[y, xx]
            out[i, j] = acc / ((h1 - h0) * (w1 - w0))
    return out


def loop_bicubic(x, oh, ow):
    """PyTorch bicubic (align_corners=False, A=-0.75, border-clamped taps), per output pixel.
    x: (H, W, C) float64."""
    h, w = x.shape[:2]
    out = np.zeros((oh, ow) + x.shape[2:])
    for i in range(oh):
        sy = (i + 0.5) * h / oh - 0.5
        for j in range(ow):
            sx = (j + 0.5) * w / ow - 0.5
            acc = 0.0
            for ty in range(math.floor(sy) - 1, math.floor(sy) + 3):
                for tx in range(math.floor(sx) - 1, math.floor(sx) + 3):
                    wgt = _cubic(sy - ty) * _cubic(sx - tx)
                    acc = acc + wgt * x[min(max(ty, 0), h - 1), min(max(tx, 0), w - 1)]
            out[i, j] = acc
    return out


SIZE_PAIRS = ([((16, 16), (n, n)) for n in range(1, 14)]
              + [((3, 3), (16, 16)), ((7, 7), (5, 5)), ((5, 9), (13, 4)), ((16, 11), (6, 16)), ((2, 1), (3, 7))])
MODES = {"area": (resample.resize_area, resample.area_matrix, loop_area),
         "bicubic": (resample.resize_bicubic, resample.bicubic_matrix, loop_bicubic)}


def _rand_image(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("src,dst", SIZE_PAIRS, ids=lambda s: "x".join(map(str, s)))
def test_resize_vs_float64_loop(mode, src, dst):
    fn, mat, loop = MODES[mode]
    x = _rand_image((2,) + src + (3,), seed=src[0] * 100 + dst[1])
    want = np.stack([loop(xi, *dst) for xi in x])
    got = np.asarray(fn(jnp.asarray(x, jnp.float32), dst))
    assert got.shape == (2,) + dst + (3,)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the float64 matrices themselves are exact
    m_h, m_w = mat(src[0], dst[0]), mat(src[1], dst[1])
    np.testing.assert_allclose(np.einsum("oh,bhwc,pw->bopc", m_h, x, m_w), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("src,dst", SIZE_PAIRS, ids=lambda s: "x".join(map(str, s)))
def test_resize_vs_torch_interpolate(mode, src, dst):
    torch = pytest.importorskip("torch", reason="torch not installed: skip the F.interpolate comparison")
    fn, mat, _ = MODES[mode]
    x = _rand_image((2, 3) + src, seed=7 + src[1] * 10 + dst[0])           # NCHW, float64
    kw = {"align_corners": False} if mode == "bicubic" else {}
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode=mode, **kw).numpy()
    want = want.transpose(0, 2, 3, 1)
    x_nhwc = x.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.einsum("oh,bhwc,pw->bopc", mat(src[0], dst[0]), x_nhwc, mat(src[1], dst[1])),
                               want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x_nhwc, jnp.float32), dst)), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [resample.resize_area, resample.resize_bicubic])
def test_resize_same_size_is_identity_and_int_size(fn):
    x = jnp.asarray(_rand_image((1, 6, 6, 2), 3), jnp.float32)
    np.testing.assert_array_equal(np.asarray(fn(x, 6)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(fn(x, 4)), np.asarray(fn(x, (4, 4))))


def test_resize_area_has_overlapping_windows():
    """16 -> 13 windows overlap (16 % 13 != 0): a matrix row sums to 1 but columns are shared."""
    m = resample.area_matrix(16, 13)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-15)
    assert ((m > 0).sum(0) > 1).any()


# =============================================================================================
# scale schedules and masks
# =============================================================================================
def _levels(patch_nums):
    lvl = []
    for k, pn in enumerate(patch_nums):
        lvl += [k] * (pn * pn)
    return np.array(lvl)


@pytest.mark.parametrize("pns", [VAR_256, scales.VAR_SCHEDULES[512], (1, 2, 4, 8), (3, 5)])
def test_scale_lens_and_begin_ends(pns):
    lens = scales.scale_lens(pns)
    assert lens == tuple(p * p for p in pns)
    assert scales.seq_len(pns) == sum(p * p for p in pns)
    be = scales.begin_ends(pns)
    cum = np.concatenate([[0], np.cumsum([p * p for p in pns])])
    assert [tuple(x) for x in be] == list(zip(cum[:-1].tolist(), cum[1:].tolist()))
    np.testing.assert_array_equal(scales.level_ids(lens), _levels(pns))
    assert scales.infer_patch_nums(lvl_counts=np.bincount(_levels(pns))) == tuple(pns)


def test_fixture_scale_tables(var_cases):
    pns = tuple(int(p) for p in var_cases["patch_nums"])
    assert pns == VAR_256
    assert list(scales.scale_lens(pns)) == var_cases["scale_lens"].tolist()
    assert sum(scales.scale_lens(pns)) == 680 == scales.seq_len(pns)
    assert scales.infer_patch_nums(total_len=680) == pns


def test_infer_patch_nums_errors():
    with pytest.raises(ValueError, match="not a square"):
        scales.infer_patch_nums(lvl_counts=[1, 4, 8])
    with pytest.raises(ValueError, match="patch_nums"):
        scales.infer_patch_nums(total_len=123)


def _phi_table_var(n_scales, k, dtype=np.float64):
    """VAR's Phi*Shared.__getitem__(si / (SN - 1)) with ticks and positions in `dtype`."""
    if k == 1:
        return [0] * n_scales
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    ticks = ticks.astype(dtype)
    return [int(np.argmin(np.abs(ticks - dtype(si / (n_scales - 1))))) for si in range(n_scales)]


def test_phi_index_matches_fixture_table_float32_would_not(var_cases):
    want = var_cases["phi_idx_per_scale"].tolist()
    got = [scales.phi_index(si, 10, 4) for si in range(10)]
    assert got == want
    f32 = _phi_table_var(10, 4, np.float32)
    assert f32 != want and f32[7] != want[7], "float32 should resolve the scale-7 tie differently"


@pytest.mark.parametrize("n_scales,k", [(10, 4), (10, 10), (10, 1), (4, 4), (4, 2), (7, 3), (13, 6)])
def test_phi_index_general(n_scales, k):
    assert [scales.phi_index(si, n_scales, k) for si in range(n_scales)] == _phi_table_var(n_scales, k)


def _readme_block_causal(pns):
    """README: 0 where key scale <= query scale, -inf otherwise -> boolean 'allowed' (L, L)."""
    lvl = _levels(pns)
    L = len(lvl)
    m = np.zeros((L, L), bool)
    for q in range(L):
        for k in range(L):
            m[q, k] = lvl[k] <= lvl[q]
    return m


@pytest.mark.parametrize("pns", [(1, 2, 3), (1, 2, 4, 8), (2, 3, 5)])
def test_block_masks_definition(pns):
    lens = scales.scale_lens(pns)
    want = _readme_block_causal(pns)
    got = scales.block_causal_mask(lens)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    lvl = _levels(pns)
    np.testing.assert_array_equal(scales.block_diagonal_mask(lens), lvl[:, None] == lvl[None, :])


def test_block_causal_mask_equals_torch_buffer(var_tiny_files):
    from safetensors.numpy import load_file
    sd = load_file(str(var_tiny_files / "var.safetensors"))
    bias = sd["attn_bias_for_masking"][0, 0]
    assert set(np.unique(bias).tolist()) == {0.0, -np.inf}
    np.testing.assert_array_equal(scales.block_causal_mask(scales.scale_lens(VAR_256)), bias == 0)
    np.testing.assert_array_equal(scales.level_ids(scales.scale_lens(VAR_256)), sd["lvl_1L"][0])


# =============================================================================================
# dense attention
# =============================================================================================
def np_attention(q, k, v, allowed, scale):
    """float64 reference: q (B, Lq, H, D), k/v (B, Lk, H, D), allowed (Lq, Lk) bool or None."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _allowed(mask, pns, lq, lk):
    lvl = _levels(pns)
    if mask == "none":
        return None
    if mask == "block_causal":
        return (lvl[None, :] <= lvl[:, None])[:lq, :lk]
    if mask == "block_diagonal":
        return (lvl[None, :] == lvl[:, None])[:lq, :lk]
    # causal: queries are the last lq positions of the lk-long sequence
    qpos = np.arange(lk - lq, lk)
    return np.arange(lk)[None, :] <= qpos[:, None]


@pytest.mark.parametrize("mask", attn_ops.MASKS)
@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_dense_attention_vs_numpy(mask, scale):
    pns = (1, 2, 3, 4)
    L = sum(p * p for p in pns)
    rng = np.random.default_rng(11)
    q, k, v = (rng.normal(size=(2, L, 3, 8)).astype(np.float32) for _ in range(3))
    got = attn_ops.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale_lens=scales.scale_lens(pns),
                             mask=mask, scale=scale)
    want = np_attention(q, k, v, _allowed(mask, pns, L, L), 8 ** -0.5 if scale is None else scale)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0)


def test_attention_masks_differ():
    """The masks really change the result (so the comparisons above are discriminating)."""
    pns = (1, 2, 3)
    L = 14
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(1, L, 2, 4)), jnp.float32) for _ in range(3))
    outs = {m: np.asarray(attn_ops.attention(q, k, v, scale_lens=scales.scale_lens(pns), mask=m))
            for m in attn_ops.MASKS}
    for a in attn_ops.MASKS:
        for b in attn_ops.MASKS:
            if a < b:
                assert np.abs(outs[a] - outs[b]).max() > 1e-2, (a, b)


def test_causal_attention_with_longer_keys():
    """KV-cache shape: queries are the last Lq positions of the keys."""
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 5, 2, 4)).astype(np.float32)
    k, v = (rng.normal(size=(2, 12, 2, 4)).astype(np.float32) for _ in range(2))
    got = attn_ops.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask="causal")
    np.testing.assert_allclose(np.asarray(got), np_attention(q, k, v, _allowed("causal", (), 5, 12), 0.5),
                               atol=2e-5, rtol=0)


def test_attention_rejects_bad_arguments():
    x = jnp.ones((1, 5, 1, 4))
    with pytest.raises(ValueError, match="mask"):
        attn_ops.attention(x, x, x, mask="diagonal")
    with pytest.raises(ValueError, match="impl"):
        attn_ops.attention(x, x, x, mask="none", impl="cudnn")
    with pytest.raises(ValueError, match="scale_lens"):
        attn_ops.attention(x, x, x, mask="block_causal")


# =============================================================================================
# top-k / top-p filter
# =============================================================================================
def np_top_k_top_p(logits, top_k, top_p):
    """VAR's sample_with_top_k_top_p_ masking, re-implemented in NumPy (float64 softmax/cumsum).
    Also returns, per row, the smallest relative distance of a cumulative probability to the
    1 - top_p threshold (rows closer than fp32 noise are ambiguous)."""
    x = np.array(logits, np.float64)
    if top_k > 0:
        kth = np.sort(x, -1)[..., -top_k][..., None]                # the k largest: amin of topk
        x = np.where(x < kth, -np.inf, x)
    closeness = np.full(x.shape[:-1], np.inf)
    if top_p > 0:
        order = np.argsort(x, -1, kind="stable")                    # ascending
        srt = np.take_along_axis(x, order, -1)
        p = np.exp(srt - srt.max(-1, keepdims=True))
        cum = np.cumsum(p / p.sum(-1, keepdims=True), -1)
        remove_sorted = cum <= 1 - top_p
        remove_sorted[..., -1] = False
        finite = np.isfinite(srt)
        rel = np.abs(cum - (1 - top_p)) / np.maximum(cum, 1e-300)
        closeness = np.where(finite, rel, np.inf).min(-1)
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)         # scatter back
        x = np.where(remove, -np.inf, x)
    return x, closeness


def torch_top_k_top_p(logits, top_k, top_p):
    """The masking part of VAR's sample_with_top_k_top_p_, verbatim in torch (float32)."""
    import torch
    lg = torch.from_numpy(np.array(logits, np.float32))
    if top_k > 0:
        idx_to_remove = lg < lg.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        lg.masked_fill_(idx_to_remove, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = lg.sort(dim=-1, descending=False)
        sorted_idx_to_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_idx_to_remove[..., -1:] = False
        lg.masked_fill_(sorted_idx_to_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_idx_to_remove),
                        -torch.inf)
    return lg.numpy()


KP = [(0, 0.0), (1, 0.0), (5, 0.0), (40, 0.0), (64, 0.0), (0, 0.5), (0, 0.9), (0, 0.99), (0, 1.0),
      (10, 0.8), (3, 0.5), (1, 0.96), (30, 0.3)]


def _logits(seed, shape=(3, 4, 64), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


@pytest.mark.parametrize("top_k,top_p", KP)
def test_top_k_top_p_vs_numpy(top_k, top_p):
    lg = _logits(100 + top_k + int(top_p * 100))
    got = np.asarray(top_k_top_p_filter(jnp.asarray(lg), top_k, top_p))
    want, close = np_top_k_top_p(lg, top_k, top_p)
    ok = close > 1e-5                                           # rows not decided by fp32 rounding
    assert ok.mean() > 0.9
    np.testing.assert_array_equal(np.isinf(got)[ok], np.isinf(want)[ok])
    np.testing.assert_array_equal(got[ok][np.isfinite(got[ok])], lg[ok][np.isfinite(want[ok])])
    # something is filtered whenever a filter is active and nontrivial
    if (0 < top_k < lg.shape[-1]) or 0 < top_p < 1:
        assert np.isinf(got).any()
    if top_k == 0 and top_p == 0:
        np.testing.assert_array_equal(got, lg)


@pytest.mark.parametrize("top_k,top_p", KP)
def test_top_k_top_p_vs_torch(top_k, top_p):
    pytest.importorskip("torch", reason="torch not installed: skip the torch-semantics comparison")
    lg = _logits(200 + top_k + int(top_p * 100))
    got = np.asarray(top_k_top_p_filter(jnp.asarray(lg), top_k, top_p))
    _, close = np_top_k_top_p(lg, top_k, top_p)
    ok = close > 1e-5
    np.testing.assert_array_equal(got[ok], torch_top_k_top_p(lg, top_k, top_p)[ok])


def test_top_k_1_keeps_only_the_max():
    lg = _logits(9, (5, 7, 300))
    for top_p in (0.0, 0.5):
        got = np.asarray(top_k_top_p_filter(jnp.asarray(lg), 1, top_p))
        assert (np.isfinite(got).sum(-1) == 1).all()
        np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(lg, -1))
        np.testing.assert_array_equal(got.max(-1), lg.max(-1))
        # hence greedy: categorical sampling can only return the argmax
        draws = jax.random.categorical(jax.random.key(0), jnp.asarray(got), axis=-1)
        np.testing.assert_array_equal(np.asarray(draws), np.argmax(lg, -1))


def test_top_p_keeps_smallest_set_with_enough_mass():
    """Direct property check of nucleus filtering on well-separated probabilities."""
    probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    lg = np.log(probs)[None].astype(np.float32)
    for top_p, n_keep in ((0.4, 1), (0.6, 2), (0.8, 3), (0.95, 4), (0.99, 5)):
        got = np.asarray(top_k_top_p_filter(jnp.asarray(lg), 0, top_p))
        assert np.isfinite(got).sum() == n_keep, (top_p, got)
        assert np.isfinite(got[0, :n_keep]).all()


@pytest.mark.parametrize("top_k,top_p", [(0, 0.0), (4, 0.0), (0, 0.8), (5, 0.9)])
def test_draw_frequencies_match_the_filtered_softmax(top_k, top_p):
    """`draw` (one uniform per token through the kept mass) samples softmax of the NumPy-filtered logits:
    frequencies over 40,000 draws within 5 standard errors of the exact probabilities, nothing drawn
    outside the kept set, and a sample's draws depend only on its own key."""
    from arjax.sample.filters import draw
    lg = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05], np.float32))[None]
    want, _ = np_top_k_top_p(lg, top_k, top_p)
    prob = np.exp(want[0] - want[0].max())
    prob /= prob.sum()
    b, n = 8, 5000
    keys = jax.random.split(jax.random.key(3), b)
    idx, filtered = jax.jit(lambda k, x: draw(k, x, top_k, top_p, 2, 0))(
        keys, jnp.broadcast_to(jnp.asarray(lg), (b, n, lg.shape[-1])))
    idx = np.asarray(idx)
    np.testing.assert_array_equal(np.isinf(np.asarray(filtered)[0, 0]), np.isinf(want[0]))
    freq = np.bincount(idx.ravel(), minlength=lg.shape[-1]) / idx.size
    assert (freq[prob == 0] == 0).all()
    np.testing.assert_array_less(np.abs(freq - prob), 5 * np.sqrt(prob * (1 - prob) / idx.size) + 1e-12)
    one, _ = draw(keys[:1], jnp.broadcast_to(jnp.asarray(lg), (1, n, lg.shape[-1])), top_k, top_p, 2, 0)
    np.testing.assert_array_equal(np.asarray(one)[0], idx[0])


@pytest.mark.parametrize("v", [1, 37, 64, 1000, 4096])
def test_matmul_cumsum_vs_float64(v):
    """The draw's cumulative mass (two triangular matmuls) against float64 NumPy, widths that are and are
    not multiples of the block, non-negative inputs as the draw gives it (exp of logits, zeros off the kept set)."""
    from arjax.sample.filters import _cumsum
    rng = np.random.default_rng(v)
    x = rng.exponential(size=(5, v)).astype(np.float32) * (rng.random((5, v)) < 0.7)
    got = np.asarray(jax.jit(_cumsum)(jnp.asarray(x)))
    want = np.cumsum(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * want[:, -1:].max())


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
def test_xla_attention_gradients_vs_float64(dtype, tol):
    """The XLA path CPU training takes (block-causal attention per group of scales, concatenated) and the
    masked dense form: output and dQ/dK/dV against the float64 textbook backward."""
    from attention_reference import check_kernel, dense_mask
    mask = "block_causal"
    lens = (1, 4, 9, 16, 25, 36, 64)  # several groups of scale_group_attention, one of them multi-scale
    check_kernel(lambda q, k, v, s: attn_ops.attention(q, k, v, scale_lens=lens, mask=mask, impl="xla", scale=s),
                 lens, mask, heads=2, dim=8, dtype=dtype, tol=tol, seed=3)
    m = dense_mask(mask, lens, sum(lens))
    check_kernel(lambda q, k, v, s: attn_ops.dense_attention(q, k, v, m, scale=s), lens, mask, heads=2, dim=8,
                 dtype=dtype, tol=tol, seed=4)
