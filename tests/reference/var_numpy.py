"""An independent float64 NumPy implementation of VAR (teacher-forced transformer, greedy CFG sampling)
and of its multi-scale VQVAE (encoder, quantiser, f-hat accumulation, decoder).

Written from the parity fixture's README (tests/../shared/fixtures/var_tiny/README.md) and the PyTorch
module layout of github.com/FoundationVision/VAR. Everything operates directly on a torch-layout state
dict (a dict of numpy arrays: Linear weights (out, in), conv weights (O, I, kH, kW), NCHW activations)
and never imports arjax. The architecture is read off the keys, so any depth / width / schedule works.

This module also builds random torch-layout state dicts for arbitrary architectures (the key lists
are validated against the real fixture checkpoints in tests/test_var_any_size.py).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

LOG_100 = math.log(100.0)


# ------------------------------------------------------------------------------------------------
# small numerics
# ------------------------------------------------------------------------------------------------
def f64(x):
    return np.asarray(x, np.float64)


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def linear(x, sd, name):
    """torch nn.Linear: x @ W.T + b, W stored (out, in)."""
    y = x @ f64(sd[name + ".weight"]).T
    if name + ".bias" in sd:
        y = y + f64(sd[name + ".bias"])
    return y


def layer_norm(x, eps):
    """LayerNorm over the last axis without affine parameters (biased variance)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def l2_normalize(x, eps=1e-12):
    """F.normalize(x, dim=-1)."""
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), eps)


def scale_lens(patch_nums):
    return [int(p) * int(p) for p in patch_nums]


def level_of_token(patch_nums):
    return np.concatenate([np.full(n, i) for i, n in enumerate(scale_lens(patch_nums))])


# ------------------------------------------------------------------------------------------------
# VAR transformer
# ------------------------------------------------------------------------------------------------
def var_depth(sd):
    d = 0
    while f"blocks.{d}.attn.mat_qkv.weight" in sd:
        d += 1
    return d


def var_forward(sd, labels, var_input, patch_nums, *, num_heads=None, norm_eps=1e-6, return_hidden=False):
    """Teacher-forced VAR forward (eval mode, no cond dropout).

    sd: torch-layout state dict; labels (B,) ints (num_classes = unconditional);
    var_input (B, L - pn0**2, Cvae). Returns float64 logits (B, L, V).
    """
    labels = np.asarray(labels)
    x_in = f64(var_input)
    b = labels.shape[0]
    c = sd["class_emb.weight"].shape[1]
    lens = scale_lens(patch_nums)
    total, first_l = sum(lens), lens[0]
    depth = var_depth(sd)
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    if num_heads is None:
        if depth and not l2:
            raise ValueError("without attn_l2_norm the state dict does not record num_heads: pass it")
        num_heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else 1
    hd = c // num_heads
    shared = "shared_ada_lin.1.weight" in sd

    cond = f64(sd["class_emb.weight"])[labels]                                  # (B, C)
    sos = np.broadcast_to(cond[:, None, :], (b, first_l, c)) + f64(sd["pos_start"])
    x = np.concatenate([sos, linear(x_in, sd, "word_embed")], axis=1)           # (B, L, C)
    lvl = level_of_token(patch_nums)
    x = x + f64(sd["lvl_embed.weight"])[lvl][None] + f64(sd["pos_1LC"])[:, :total]
    allowed = lvl[None, :] <= lvl[:, None]                                      # key scale <= query scale

    if shared:
        gss = linear(silu(cond), sd, "shared_ada_lin.1").reshape(b, 1, 6, c)

    for i in range(depth):
        p = f"blocks.{i}."
        if shared:
            ada = f64(sd[p + "ada_gss"]) + gss
        else:
            ada = linear(silu(cond), sd, p + "ada_lin.1").reshape(b, 1, 6, c)
        g1, g2, s1, s2, sh1, sh2 = (ada[:, :, j] for j in range(6))

        h = layer_norm(x, norm_eps) * (1 + s1) + sh1
        bias = np.concatenate([f64(sd[p + "attn.q_bias"]), np.zeros(c), f64(sd[p + "attn.v_bias"])])
        qkv = h @ f64(sd[p + "attn.mat_qkv.weight"]).T + bias                  # (B, L, 3C)
        qkv = qkv.reshape(b, total, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)  # 3, B, H, L, hd
        q, k, v = qkv[0], qkv[1], qkv[2]
        if l2:
            sm = np.exp(np.minimum(f64(sd[p + "attn.scale_mul_1H11"]), LOG_100))  # (1, H, 1, 1)
            q = l2_normalize(q) * sm
            k = l2_normalize(k)
            att_scale = 1.0
        else:
            att_scale = 0.25 / math.sqrt(hd)
        s = (q @ k.swapaxes(-1, -2)) * att_scale
        s = np.where(allowed, s, -np.inf)
        o = softmax(s, -1) @ v
        o = o.transpose(0, 2, 1, 3).reshape(b, total, c)
        x = x + linear(o, sd, p + "attn.proj") * g1

        h = layer_norm(x, norm_eps) * (1 + s2) + sh2
        x = x + linear(gelu_tanh(linear(h, sd, p + "ffn.fc1")), sd, p + "ffn.fc2") * g2

    if return_hidden:
        return x
    ada = linear(silu(cond), sd, "head_nm.ada_lin.1").reshape(b, 1, 2, c)
    h = layer_norm(x, norm_eps) * (1 + ada[:, :, 0]) + ada[:, :, 1]
    return linear(h, sd, "head")


def cross_entropy(logits, target, label_smoothing=0.0):
    """torch F.cross_entropy(reduction='none') semantics, last axis = classes."""
    logp = logits - logsumexp(logits, -1)[..., None]
    nll = -np.take_along_axis(logp, np.asarray(target)[..., None], -1)[..., 0]
    if label_smoothing == 0:
        return nll
    smooth = -logp.mean(-1)
    return (1 - label_smoothing) * nll + label_smoothing * smooth


# ------------------------------------------------------------------------------------------------
# resampling (PyTorch semantics), written per output pixel
# ------------------------------------------------------------------------------------------------
def area_resize(x, out_hw):
    """F.interpolate(x, size, mode='area') == adaptive_avg_pool2d; x (B, C, H, W)."""
    oh, ow = out_hw
    h, w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-2, -1))
    return out


def _cubic(d, a=-0.75):
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _cubic_taps(i, n_in, n_out):
    src = (i + 0.5) * n_in / n_out - 0.5
    base = math.floor(src)
    t = src - base
    return [(min(max(base + o, 0), n_in - 1), _cubic(t - o)) for o in (-1, 0, 1, 2)]


def bicubic_resize(x, out_hw):
    """F.interpolate(x, size, mode='bicubic', align_corners=False); x (B, C, H, W)."""
    oh, ow = out_hw
    h, w = x.shape[-2:]
    if (oh, ow) == (h, w):
        return x.copy()
    out = np.zeros(x.shape[:-2] + (oh, ow))
    col_taps = [_cubic_taps(j, w, ow) for j in range(ow)]
    for i in range(oh):
        for yi, wy in _cubic_taps(i, h, oh):
            row = x[..., yi, :]
            for j, taps in enumerate(col_taps):
                for xj, wx in taps:
                    out[..., i, j] += wy * wx * row[..., xj]
    return out


# ------------------------------------------------------------------------------------------------
# convolutional building blocks (NCHW, torch weights)
# ------------------------------------------------------------------------------------------------
def conv2d(x, sd, name, *, stride=1, pad=None):
    """nn.Conv2d; pad: int (symmetric) or (top, bottom, left, right); default k // 2."""
    w = f64(sd[name + ".weight"])
    k = w.shape[-1]
    if pad is None:
        pad = k // 2
    if isinstance(pad, int):
        pad = (pad, pad, pad, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    win = sliding_window_view(xp, (w.shape[2], w.shape[3]), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))          # (B, H', W', O)
    y = y.transpose(0, 3, 1, 2)
    if name + ".bias" in sd:
        y = y + f64(sd[name + ".bias"])[None, :, None, None]
    return y


def group_norm(x, sd, name, groups=32, eps=1e-6):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    mu = g.mean(-1, keepdims=True)
    var = g.var(-1, keepdims=True)
    y = ((g - mu) / np.sqrt(var + eps)).reshape(b, c, h, w)
    return y * f64(sd[name + ".weight"])[None, :, None, None] + f64(sd[name + ".bias"])[None, :, None, None]


def resnet_block(x, sd, p):
    h = conv2d(silu(group_norm(x, sd, p + ".norm1")), sd, p + ".conv1")
    h = conv2d(silu(group_norm(h, sd, p + ".norm2")), sd, p + ".conv2")
    sc = conv2d(x, sd, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in sd else x
    return sc + h


def attn_block(x, sd, p):
    b, c, h, w = x.shape
    qkv = conv2d(group_norm(x, sd, p + ".norm"), sd, p + ".qkv").reshape(b, 3, c, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    att = softmax((q.swapaxes(1, 2) @ k) * c ** -0.5, -1)                  # (B, q, k)
    o = (v @ att.swapaxes(1, 2)).reshape(b, c, h, w)
    return x + conv2d(o, sd, p + ".proj_out")


def _count(sd, fmt):
    n = 0
    while fmt.format(n) in sd:
        n += 1
    return n


def _mid(h, sd, p):
    h = resnet_block(h, sd, p + ".mid.block_1")
    if p + ".mid.attn_1.qkv.weight" in sd:
        h = attn_block(h, sd, p + ".mid.attn_1")
    return resnet_block(h, sd, p + ".mid.block_2")


def encoder(sd, img):
    """img (B, 3, H, W) -> encoder output (before quant_conv)."""
    h = conv2d(f64(img), sd, "encoder.conv_in")
    n_lvl = _count(sd, "encoder.down.{}.block.0.conv1.weight")
    for i in range(n_lvl):
        p = f"encoder.down.{i}"
        for j in range(_count(sd, p + ".block.{}.conv1.weight")):
            h = resnet_block(h, sd, f"{p}.block.{j}")
            if f"{p}.attn.{j}.qkv.weight" in sd:
                h = attn_block(h, sd, f"{p}.attn.{j}")
        if p + ".downsample.conv.weight" in sd:
            h = conv2d(h, sd, p + ".downsample.conv", stride=2, pad=(0, 1, 0, 1))
    h = _mid(h, sd, "encoder")
    return conv2d(silu(group_norm(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")


def decoder(sd, z):
    h = _mid(conv2d(f64(z), sd, "decoder.conv_in"), sd, "decoder")
    n_lvl = _count(sd, "decoder.up.{}.block.0.conv1.weight")
    for i in reversed(range(n_lvl)):
        p = f"decoder.up.{i}"
        for j in range(_count(sd, p + ".block.{}.conv1.weight")):
            h = resnet_block(h, sd, f"{p}.block.{j}")
            if f"{p}.attn.{j}.qkv.weight" in sd:
                h = attn_block(h, sd, f"{p}.attn.{j}")
        if p + ".upsample.conv.weight" in sd:
            h = conv2d(h.repeat(2, axis=2).repeat(2, axis=3), sd, p + ".upsample.conv")
    return conv2d(silu(group_norm(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def img_to_f(sd, img):
    """Quantiser input: quant_conv(encoder(img))."""
    return conv2d(encoder(sd, img), sd, "quant_conv")


def fhat_to_img(sd, f_hat):
    return np.clip(decoder(sd, conv2d(f64(f_hat), sd, "post_quant_conv")), -1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# multi-scale quantiser
# ------------------------------------------------------------------------------------------------
def phi_names(sd):
    """Torch names of the phi convs, in index order, and whether they are 'fully shared'."""
    if "quantize.quant_resi.qresi.weight" in sd:
        return ["quantize.quant_resi.qresi"]
    n = _count(sd, "quantize.quant_resi.qresi_ls.{}.weight")
    if n:
        return [f"quantize.quant_resi.qresi_ls.{i}" for i in range(n)]
    n = _count(sd, "quantize.quant_resi.{}.weight")
    return [f"quantize.quant_resi.{i}" for i in range(n)]


def phi_choice(si, n_scales, n_phis):
    """VAR's PhiPartiallyShared / PhiNonShared __getitem__(si / (SN - 1)), float64 throughout."""
    if n_phis == 1:
        return 0
    k = n_phis
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    return int(np.argmin(np.abs(ticks - si / (n_scales - 1))))


def phi(sd, h, si, n_scales, quant_resi=0.5):
    names = phi_names(sd)
    if not names:
        return h
    name = names[phi_choice(si, n_scales, len(names))]
    r = abs(quant_resi)
    return h * (1 - r) + conv2d(h, sd, name) * r


def _codebook(sd):
    return f64(sd["quantize.embedding.weight"])


def _emb_map(sd, idx, pn):
    """idx (B, pn*pn) -> (B, C, pn, pn)."""
    e = _codebook(sd)[np.asarray(idx)]                                       # (B, pn*pn, C)
    return e.reshape(e.shape[0], pn, pn, -1).transpose(0, 3, 1, 2)


def quantize(sd, f, patch_nums, quant_resi=0.5):
    """f (B, C, H, W) -> (indices (B, L), list of cumulative f_hat, per-token margin between the two
    smallest squared distances)."""
    f = f64(f)
    b, c, hh, ww = f.shape
    cb = _codebook(sd)
    n = len(patch_nums)
    f_rest, f_hat = f.copy(), np.zeros_like(f)
    idx_all, margins, fhats = [], [], []
    for si, pn in enumerate(patch_nums):
        z = area_resize(f_rest, (pn, pn)) if pn != hh else f_rest
        z = z.transpose(0, 2, 3, 1).reshape(-1, c)
        d = (z * z).sum(-1)[:, None] + (cb * cb).sum(-1)[None] - 2 * z @ cb.T   # float64: exact enough
        srt = np.sort(d, -1)
        idx = np.argmin(d, -1).reshape(b, pn * pn)
        idx_all.append(idx)
        margins.append((srt[:, 1] - srt[:, 0]).reshape(b, pn * pn))
        h = bicubic_resize(_emb_map(sd, idx, pn), (hh, ww))
        h = phi(sd, h, si, n, quant_resi)
        f_hat = f_hat + h
        f_rest = f_rest - h
        fhats.append(f_hat.copy())
    return np.concatenate(idx_all, 1), fhats, np.concatenate(margins, 1)


def indices_to_fhats(sd, idx, patch_nums, quant_resi=0.5):
    """idx (B, L) -> list of cumulative f_hat (B, C, H, W) after every scale."""
    idx = np.asarray(idx)
    full = patch_nums[-1]
    n, off, f_hat, out = len(patch_nums), 0, 0.0, []
    for si, pn in enumerate(patch_nums):
        h = bicubic_resize(_emb_map(sd, idx[:, off:off + pn * pn], pn), (full, full))
        f_hat = f_hat + phi(sd, h, si, n, quant_resi)
        out.append(f_hat)
        off += pn * pn
    return out


def fhats_to_var_input(fhats, patch_nums):
    """Teacher-forcing input (B, L - pn0**2, C) from the cumulative f_hats."""
    outs = []
    for fh, pn in zip(fhats[:-1], patch_nums[1:]):
        z = area_resize(fh, (pn, pn))
        outs.append(z.reshape(z.shape[0], z.shape[1], -1).transpose(0, 2, 1))
    return np.concatenate(outs, 1)


# ------------------------------------------------------------------------------------------------
# greedy CFG sampling (top_k = 1) built on the teacher-forced forward
# ------------------------------------------------------------------------------------------------
def greedy_cfg_sample(var_sd, vae_sd, labels, patch_nums, *, cfg=1.5, quant_resi=0.5, num_heads=None):
    """VAR's autoregressive_infer_cfg with top_k=1. Thanks to the block-causal mask, the logits of
    scale k from a full teacher-forced forward only depend on inputs of scales <= k, so each scale
    is one full forward (no KV cache). Returns tokens (B, L), top-2 guided logits (B, L, 2), the
    final f_hat (B, C, H, W)."""
    labels = np.asarray(labels)
    b = labels.shape[0]
    num_classes = var_sd["class_emb.weight"].shape[0] - 1
    cvae = var_sd["word_embed.weight"].shape[1]
    lens = scale_lens(patch_nums)
    total, n = sum(lens), len(patch_nums)
    full = patch_nums[-1]
    y = np.concatenate([labels, np.full_like(labels, num_classes)])
    var_in = np.zeros((2 * b, total - lens[0], cvae))
    f_hat = np.zeros((b, cvae, full, full))
    tokens, top2 = [], []
    off = 0
    for si, pn in enumerate(patch_nums):
        logits = var_forward(var_sd, y, var_in, patch_nums, num_heads=num_heads)[:, off:off + pn * pn]
        t = cfg * si / (n - 1)
        g = (1 + t) * logits[:b] - t * logits[b:]
        srt = np.sort(g, -1)
        top2.append(np.stack([srt[..., -1], srt[..., -2]], -1))
        idx = np.argmax(g, -1)
        tokens.append(idx)
        h = _emb_map(vae_sd, idx, pn)
        if pn != full:
            h = bicubic_resize(h, (full, full))
        f_hat = f_hat + phi(vae_sd, h, si, n, quant_resi)
        off += pn * pn
        if si != n - 1:
            nxt = patch_nums[si + 1]
            z = area_resize(f_hat, (nxt, nxt)).reshape(b, cvae, -1).transpose(0, 2, 1)
            s = off - lens[0]
            var_in[:b, s:s + nxt * nxt] = z
            var_in[b:, s:s + nxt * nxt] = z
    return np.concatenate(tokens, 1), np.concatenate(top2, 1), f_hat


# ------------------------------------------------------------------------------------------------
# torch-layout state dicts of arbitrary size
# ------------------------------------------------------------------------------------------------
def var_param_shapes(*, depth, embed_dim, num_heads, mlp_ratio=4.0, vocab_size=4096, cvae=32,
                     num_classes=1000, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), shared_aln=False,
                     attn_l2_norm=True):
    """name -> shape of the VAR state dict (parameters and buffers), as torch's state_dict() has it."""
    c, total = embed_dim, sum(scale_lens(patch_nums))
    hidden = round(c * mlp_ratio)
    s = {"word_embed.weight": (c, cvae), "word_embed.bias": (c,),
         "class_emb.weight": (num_classes + 1, c),
         "pos_start": (1, scale_lens(patch_nums)[0], c), "pos_1LC": (1, total, c),
         "lvl_embed.weight": (len(patch_nums), c),
         "lvl_1L": (1, total), "attn_bias_for_masking": (1, 1, total, total)}
    if shared_aln:
        s["shared_ada_lin.1.weight"] = (6 * c, c)
        s["shared_ada_lin.1.bias"] = (6 * c,)
    for i in range(depth):
        p = f"blocks.{i}."
        if shared_aln:
            s[p + "ada_gss"] = (1, 1, 6, c)
        else:
            s[p + "ada_lin.1.weight"] = (6 * c, c)
            s[p + "ada_lin.1.bias"] = (6 * c,)
        s[p + "attn.mat_qkv.weight"] = (3 * c, c)
        s[p + "attn.q_bias"] = (c,)
        s[p + "attn.v_bias"] = (c,)
        s[p + "attn.zero_k_bias"] = (c,)
        if attn_l2_norm:
            s[p + "attn.scale_mul_1H11"] = (1, num_heads, 1, 1)
        s[p + "attn.proj.weight"] = (c, c)
        s[p + "attn.proj.bias"] = (c,)
        s[p + "ffn.fc1.weight"] = (hidden, c)
        s[p + "ffn.fc1.bias"] = (hidden,)
        s[p + "ffn.fc2.weight"] = (c, hidden)
        s[p + "ffn.fc2.bias"] = (c,)
    s["head_nm.ada_lin.1.weight"] = (2 * c, c)
    s["head_nm.ada_lin.1.bias"] = (2 * c,)
    s["head.weight"] = (vocab_size, c)
    s["head.bias"] = (vocab_size,)
    return s


def random_var_state_dict(seed, *, gamma_std=1.0, **arch):
    """A float32 torch-layout VAR state dict with values chosen so that every part matters:
    AdaLN gammas of order 1 (blocks change the logits a lot), attention temperatures log U(2, 30)
    with one head above the log(100) clamp, logits of order a few units."""
    rng = np.random.default_rng(seed)
    shapes = var_param_shapes(**arch)
    patch_nums = arch.get("patch_nums", (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    c = arch["embed_dim"]
    sd = {}
    for name, shp in shapes.items():
        if name == "lvl_1L":
            sd[name] = level_of_token(patch_nums)[None].astype(np.int64)
            continue
        if name == "attn_bias_for_masking":
            lvl = level_of_token(patch_nums)
            sd[name] = np.where(lvl[None, :] <= lvl[:, None], 0.0, -np.inf)[None, None].astype(np.float32)
            continue
        if name.endswith("zero_k_bias"):
            sd[name] = np.zeros(shp, np.float32)
            continue
        if name.endswith("scale_mul_1H11"):
            v = np.log(rng.uniform(2, 30, shp))
            if name.startswith("blocks.0."):
                v[0, -1] = math.log(200.0)
            sd[name] = v.astype(np.float32)
            continue
        if name.endswith(".weight") and len(shp) == 2 and name not in ("class_emb.weight", "lvl_embed.weight"):
            std = 1.0 / math.sqrt(shp[1])
            if "ada_lin" in name:
                std *= 0.5
            v = rng.normal(0, std, shp)
        elif name.endswith("ada_lin.1.bias") and not name.startswith("head_nm"):
            # [gamma1, gamma2, scale1, scale2, shift1, shift2]
            v = np.concatenate([rng.normal(0, gamma_std, 2 * c), rng.normal(0, 0.3, 4 * c)])
        elif name.endswith("ada_gss"):
            v = np.concatenate([rng.normal(0, gamma_std, (1, 1, 2, c)), rng.normal(0, 0.3, (1, 1, 4, c))], 2)
        elif name.endswith(".bias"):
            v = rng.normal(0, 0.2, shp)
        elif name == "class_emb.weight":
            v = rng.normal(0, 1.0, shp)
        else:  # pos_start, pos_1LC, lvl_embed
            v = rng.normal(0, 0.5, shp)
        sd[name] = v.astype(np.float32)
    return sd


def vqvae_param_shapes(*, ch, ch_mult, num_res_blocks, z_channels, vocab_size, share_quant_resi,
                       num_scales, using_sa=True, using_mid_sa=True, quant_conv_ks=3, in_channels=3):
    """name -> shape of VAR's VQVAE state dict (including the `ema_vocab_hit_SV` buffer)."""
    s = {}

    def conv_(name, o, i, k):
        s[name + ".weight"] = (o, i, k, k)
        s[name + ".bias"] = (o,)

    def norm_(name, c):
        s[name + ".weight"] = (c,)
        s[name + ".bias"] = (c,)

    def res_(p, cin, cout):
        norm_(p + ".norm1", cin)
        conv_(p + ".conv1", cout, cin, 3)
        norm_(p + ".norm2", cout)
        conv_(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv_(p + ".nin_shortcut", cout, cin, 1)

    def attn_(p, c):
        norm_(p + ".norm", c)
        conv_(p + ".qkv", 3 * c, c, 1)
        conv_(p + ".proj_out", c, c, 1)

    n = len(ch_mult)
    # encoder
    conv_("encoder.conv_in", ch, in_channels, 3)
    cin_mult = (1,) + tuple(ch_mult)
    for i in range(n):
        bi, bo = ch * cin_mult[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            res_(f"encoder.down.{i}.block.{j}", bi, bo)
            bi = bo
            if using_sa and i == n - 1:
                attn_(f"encoder.down.{i}.attn.{j}", bo)
        if i != n - 1:
            conv_(f"encoder.down.{i}.downsample.conv", bo, bo, 3)
    top = ch * ch_mult[-1]
    res_("encoder.mid.block_1", top, top)
    if using_mid_sa:
        attn_("encoder.mid.attn_1", top)
    res_("encoder.mid.block_2", top, top)
    norm_("encoder.norm_out", top)
    conv_("encoder.conv_out", z_channels, top, 3)
    # decoder
    conv_("decoder.conv_in", top, z_channels, 3)
    res_("decoder.mid.block_1", top, top)
    if using_mid_sa:
        attn_("decoder.mid.attn_1", top)
    res_("decoder.mid.block_2", top, top)
    bi = top
    for i in reversed(range(n)):
        bo = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            res_(f"decoder.up.{i}.block.{j}", bi, bo)
            bi = bo
            if using_sa and i == n - 1:
                attn_(f"decoder.up.{i}.attn.{j}", bo)
        if i != 0:
            conv_(f"decoder.up.{i}.upsample.conv", bo, bo, 3)
    norm_("decoder.norm_out", ch * ch_mult[0])
    conv_("decoder.conv_out", 3, ch * ch_mult[0], 3)
    # quantiser
    conv_("quant_conv", z_channels, z_channels, quant_conv_ks)
    conv_("post_quant_conv", z_channels, z_channels, quant_conv_ks)
    s["quantize.embedding.weight"] = (vocab_size, z_channels)
    if share_quant_resi == 0:
        for i in range(num_scales):
            conv_(f"quantize.quant_resi.{i}", z_channels, z_channels, 3)
    elif share_quant_resi == 1:
        conv_("quantize.quant_resi.qresi", z_channels, z_channels, 3)
    else:
        for i in range(share_quant_resi):
            conv_(f"quantize.quant_resi.qresi_ls.{i}", z_channels, z_channels, 3)
    s["quantize.ema_vocab_hit_SV"] = (num_scales, vocab_size)
    return s


def random_vqvae_state_dict(seed, *, codebook_std=0.3, **arch):
    """A float32 torch-layout VQVAE state dict: convs N(0, 1/fan_in), GroupNorm affine 1+0.1N / 0.1N,
    codebook N(0, codebook_std^2); the EMA buffer is zeros (as in released checkpoints; unused)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shp in vqvae_param_shapes(**arch).items():
        if name == "quantize.ema_vocab_hit_SV":
            v = np.zeros(shp)
        elif name == "quantize.embedding.weight":
            v = rng.normal(0, codebook_std, shp)
        elif name.endswith(".weight") and len(shp) == 4:
            v = rng.normal(0, 1.0 / math.sqrt(shp[1] * shp[2] * shp[3]), shp)
        elif len(shp) == 1 and (".norm" in name or "norm_out" in name):
            v = 1 + 0.1 * rng.normal(size=shp) if name.endswith(".weight") else 0.1 * rng.normal(size=shp)
        else:  # conv bias
            v = rng.normal(0, 0.05, shp)
        sd[name] = np.asarray(v, np.float32)
    return sd
