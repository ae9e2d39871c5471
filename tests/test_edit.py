"""Zero-shot editing: per-scale known-token masks (the official VAR demo's rule) against an independent
float64 computation, the bilinear resize behind it, the known region's tokens kept at every scale for a
box and an arbitrary mask (every family member), the mask syntax and the CLI's before/after PNG.
Token-for-token parity with the official demo on the var_tiny fixture: tests/test_edit_parity.py."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

import arjax
from arjax import cli
from arjax.sample import edit

PNS = (1, 2, 3, 4)
SIZE = 16  # the tiny tokenizers downsample 4x: 4 x 4 last scale


def _msvq():
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    return dataclasses.asdict(VQVAEConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, vocab_size=64, z_channels=8,
                                          patch_nums=PNS, using_sa=False))


def _model(cfg_cls, **extra):
    return dataclasses.asdict(cfg_cls(depth=2, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=PNS,
                                      num_classes=5, init_adaln_gamma=0.5, init_head=1.0, **extra))


def _meta(name: str) -> dict:
    if name == "var":
        from arjax.nn.models.var import VARConfig
        return {"family": "var", "tokenizer": _msvq(), "model": _model(VARConfig)}
    if name == "hmar":
        from arjax.nn.models.hmar import HMARConfig
        return {"family": "hmar", "tokenizer": _msvq(), "model": _model(HMARConfig, mask_blocks=1)}
    from arjax.nn.models.flexvar import FlexVARConfig
    from arjax.nn.tokenizers.flexvq import FlexVQConfig
    tok = FlexVQConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, vocab_size=64, z_channels=8, enc_channels=8,
                       patch_nums=PNS, using_sa=False)
    return {"family": "flexvar", "tokenizer": dataclasses.asdict(tok), "model": _model(FlexVARConfig, pos_grid=8)}


@pytest.fixture(scope="module", params=["var", "hmar", "flexvar"])
def pipe(request):
    return arjax.build(_meta(request.param), seed=3)


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _bilinear64(x, n):
    """Float64 per-pixel F.interpolate(mode="bilinear", align_corners=False) of (B, h, w) to (B, n, n),
    written from the formula: source c = (i + 0.5) * in / out - 0.5 clamped at 0, taps floor(c) and
    floor(c) + 1 clamped to the last index, weights 1 - frac and frac."""
    b, h, w = x.shape

    def taps(i, n_in):
        if n_in == n:
            return i, i, 0.0
        c = max((i + 0.5) * n_in / n - 0.5, 0.0)
        i0 = min(int(np.floor(c)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), min(c - i0, 1.0)

    out = np.zeros((b, n, n))
    for i in range(n):
        r0, r1, a = taps(i, h)
        for j in range(n):
            c0, c1, t = taps(j, w)
            out[:, i, j] = ((1 - a) * ((1 - t) * x[:, r0, c0] + t * x[:, r0, c1])
                            + a * ((1 - t) * x[:, r1, c0] + t * x[:, r1, c1]))
    return out


def _official_known(mask, pns):
    """The demo's rule, independently: a finest-scale token is kept iff no masked pixel lies in its
    PyTorch area window; each scale is that keep grid bilinearly resized (float64) and > 0.5; the
    1 x 1 scale (at most 3 tokens) is always known. Returns the known mask and |value - 0.5|, the
    distance of each token from the threshold (ties are decided by float32 rounding)."""
    b, h, w = mask.shape
    n = pns[-1]
    keep = np.ones((b, n, n))
    for i in range(n):
        for j in range(n):
            r0, r1 = (i * h) // n, -(-(i + 1) * h // n)
            c0, c1 = (j * w) // n, -(-(j + 1) * w // n)
            keep[:, i, j] = ~mask[:, r0:r1, c0:c1].any(axis=(1, 2))
    known, margin = [], []
    for pn in pns:
        v = _bilinear64(keep, pn)
        known.append(((v > 0.5) | (pn * pn <= 3)).reshape(b, -1))
        margin.append(np.where(pn * pn <= 3, np.inf, np.abs(v - 0.5)).reshape(b, -1))
    return np.concatenate(known, 1), np.concatenate(margin, 1)


@pytest.mark.parametrize("n_in", [16, 26, 7])
def test_bilinear_resize_matches_float64_formula_and_scipy(n_in):
    from scipy import ndimage

    from arjax.ops import resample
    x = np.random.default_rng(0).random((2, n_in, n_in)).astype(np.float32)
    for n in (1, 2, 3, 5, 8, 13, n_in, 2 * n_in + 1):
        want = _bilinear64(x.astype(np.float64), n)
        got = resample.bilinear_resize_np(x, n)
        assert got.dtype == np.float32 and got.shape == (2, n, n)
        # PyTorch (and bilinear_taps) compute source coordinates in float32: ~1e-6 from float64
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{n_in} -> {n}")
        zoom = np.stack([ndimage.zoom(a.astype(np.float64), n / n_in, order=1, mode="nearest", grid_mode=True)
                         for a in x])
        np.testing.assert_allclose(got, zoom, atol=1e-5, err_msg=f"{n_in} -> {n} vs scipy")
        mat = np.einsum("oh,bhw,pw->bop", resample.bilinear_matrix(n_in, n), x, resample.bilinear_matrix(n_in, n))
        np.testing.assert_allclose(mat, want, atol=1e-5)
        jx = np.asarray(resample.resize_bilinear(x[..., None], n))[..., 0]
        np.testing.assert_allclose(jx, want, atol=1e-5)


@pytest.mark.parametrize("pns, size", [(PNS, 26), ((1, 2, 3, 5, 6, 13), 26), ((1, 3, 7), 21),
                                       ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 64)])
def test_known_tokens_follow_the_official_rule(pns, size):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    mask = np.stack([rng.random((size, size)) < 0.02,                        # scattered pixels
                     (yy - size // 2) ** 2 + (xx - size // 3) ** 2 < size,    # a blob
                     ~((yy >= size // 4) & (yy < 3 * size // 4) & (xx >= size // 5) & (xx < size // 2))])  # outpaint
    known = edit.known_tokens(mask, pns)
    want, margin = _official_known(mask, pns)
    decided = margin > 1e-5  # an exact tie (0.5) is decided by float32 rounding, as PyTorch's is
    np.testing.assert_array_equal(known[decided], want[decided])
    assert known[:, 0].all(), "the 1 x 1 scale is always the source's"
    # the finest scale is the keep grid itself: its known tokens hold no masked pixel
    n = pns[-1]
    np.testing.assert_array_equal(known[:, -n * n:], want[:, -n * n:])


def test_quickstart_like_centre_box_keeps_the_coarse_scales():
    """The quickstart model (32 px, scales 1..8) with a centre box regenerated: the former rule
    regenerated every token of the first scales (each cell touched the box), losing the kept region's
    colours. The official rule forces the 1 x 1 and 2 x 2 scales entirely and, at every scale, the
    tokens that interpolate kept finest tokens only."""
    pns, size = (1, 2, 3, 4, 6, 8), 32
    mask = np.zeros((1, size, size), bool)
    mask[:, 8:24, 8:24] = True  # box:8,8,24,24
    known = edit.known_tokens(mask, pns)
    np.testing.assert_array_equal(known, _official_known(mask, pns)[0])
    assert known[0, :1 + 4].all(), "the 1 x 1 and 2 x 2 scales must be the source's"
    begin = 0
    for pn in pns:
        k = known[0, begin:begin + pn * pn].reshape(pn, pn)
        begin += pn * pn
        if pn >= 3:
            assert k[0].all() and k[-1].all() and k[:, 0].all() and k[:, -1].all(), f"border of scale {pn} regenerated"
        if pn >= 4:
            assert not k[pn // 2, pn // 2], f"centre of scale {pn} kept"
    np.testing.assert_array_equal(known[0, -64:].reshape(8, 8)[2:6, 2:6], False)


def _box(x0, y0, x1, y1):
    m = np.zeros((SIZE, SIZE), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_edit_keeps_the_known_region_tokens_at_every_scale(pipe):
    """One call (one compilation) edits two images: the first under a box, the second under an
    arbitrary blob-shaped mask."""
    x = _images()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.stack([_box(4, 0, 12, 8), (yy - 11) ** 2 + (xx - 5) ** 2 < 12])
    source = np.asarray(pipe.tokenizer.encode(x))
    known = _official_known(mask, pipe.schedule())[0]
    assert known.all(axis=0).any() and (~known).all(axis=0).any() and (known[0] != known[1]).any()
    images, tokens = pipe.edit(x, mask, label=[1, 4], top_k=0, top_p=0.0, seed=2, return_tokens=True)
    tokens = np.asarray(tokens)
    for i in range(2):
        np.testing.assert_array_equal(tokens[i, known[i]], source[i, known[i]])
        assert (tokens[i, ~known[i]] != source[i, ~known[i]]).any(), "the regenerated region kept every source token"
    # the returned image is the decoding of the returned tokens
    np.testing.assert_allclose((np.asarray(pipe.tokenizer.decode(tokens)) + 1) / 2, np.asarray(images), atol=1e-5)


def test_edit_rejects_bad_masks(pipe):
    x = _images(1)
    with pytest.raises(ValueError, match="shape"):
        pipe.edit(x, np.ones((SIZE, SIZE + 1), bool), label=0)
    with pytest.raises(ValueError, match="no pixel"):
        pipe.edit(x, np.zeros((SIZE, SIZE), bool), label=0)
    with pytest.raises(ValueError, match="one label, or one per image"):
        pipe.edit(x, _box(0, 0, 4, 4), label=[0, 1, 2])


def test_parse_mask_box_png_and_inversion(tmp_path):
    np.testing.assert_array_equal(edit.parse_mask("box:4,0,12,8", SIZE), _box(4, 0, 12, 8))
    np.testing.assert_array_equal(edit.parse_mask("~box:4,0,12,8", SIZE), ~_box(4, 0, 12, 8))
    big = np.zeros((64, 64), np.uint8)
    big[:32, 16:48] = 255  # at 4x the model size
    Image.fromarray(big).save(tmp_path / "m.png")
    np.testing.assert_array_equal(edit.parse_mask(str(tmp_path / "m.png"), SIZE), _box(4, 0, 12, 8))
    with pytest.raises(ValueError, match="0 <= x0 < x1"):
        edit.parse_mask("box:4,0,40,8", SIZE)
    with pytest.raises(FileNotFoundError, match="neither box"):
        edit.parse_mask(str(tmp_path / "missing.png"), SIZE)


def test_before_after_enlarges_and_marks_the_region():
    rng = np.random.default_rng(0)
    src = rng.uniform(-1, 1, (SIZE, SIZE, 3))
    edited = rng.uniform(0, 1, (SIZE, SIZE, 3))
    mask = _box(4, 0, 12, 8)
    row = edit.before_after(src, mask, edited)
    s = 256 // SIZE
    assert row.shape == (SIZE * s, 3 * SIZE * s + 2 * s, 3) and row.dtype == np.uint8
    panels = [row[:, i * (SIZE * s + s):i * (SIZE * s + s) + SIZE * s].astype(int) for i in range(3)]
    up = lambda a: np.kron(a, np.ones((s, s, 1)))  # noqa: E731
    np.testing.assert_array_equal(panels[0], (up((src + 1) / 2) * 255 + 0.5).astype(int))
    np.testing.assert_array_equal(panels[2], (up(edited) * 255 + 0.5).astype(int))
    big = np.kron(mask, np.ones((s, s), bool))
    left, mid = panels[0], panels[1]
    assert (left[~big] == mid[~big]).all(), "outside the region the middle panel is the source"
    assert (left[big] != mid[big]).any(axis=-1).mean() > 0.9, "the region is marked"
    # a black / white dashed outline along the region's border
    edge = mid[big & ~np.roll(big, 1, axis=1)]
    assert np.isin(edge, (0, 255)).all() and (edge == 0).any() and (edge == 255).any()
    # a model image already >= 256 px is not enlarged
    assert edit.before_after(np.zeros((256, 256, 3)), np.eye(256, dtype=bool), np.zeros((256, 256, 3))).shape == \
        (256, 3 * 256 + 4, 3)


def test_cli_edit_writes_a_before_after_png(tmp_path, capsys):
    model = arjax.save(arjax.build(_meta("var")), tmp_path / "m")
    src = (np.random.default_rng(0).uniform(0, 255, (40, 48, 3))).astype(np.uint8)  # not square: centre-cropped
    Image.fromarray(src).save(tmp_path / "in.png")
    out = tmp_path / "edit.png"
    assert cli.main(["edit", "--checkpoint", str(model), "--image", str(tmp_path / "in.png"), "--mask",
                     "box:0,0,8,16", "--label", "2", "--out", str(out)]) == 0
    row = np.asarray(Image.open(out))
    s = 256 // SIZE  # panels enlarged to 256 px
    assert row.shape == (SIZE * s, 3 * SIZE * s + 2 * s, 3)
    assert "wrote" in capsys.readouterr().out
    # the middle panel marks exactly the box (model pixels x < 8)
    left, mid = row[:, :SIZE * s].astype(int), row[:, SIZE * s + s:2 * SIZE * s + s].astype(int)
    assert (left[:, 8 * s:] == mid[:, 8 * s:]).all() and (left[:, :8 * s] != mid[:, :8 * s]).any()
