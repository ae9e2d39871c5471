"""Zero-shot editing: per-scale known-token masks against a brute-force window check, the known region's
tokens kept at every scale for a box and an arbitrary mask (every family member), the mask syntax and
the CLI's before/after PNG."""
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


def _brute_known(mask, pns):
    """Token (i, j) of scale pn is known iff no masked pixel lies in its PyTorch area window."""
    b, h, w = mask.shape
    out = []
    for pn in pns:
        k = np.ones((b, pn, pn), bool)
        for i in range(pn):
            for j in range(pn):
                r0, r1 = (i * h) // pn, -(-(i + 1) * h // pn)
                c0, c1 = (j * w) // pn, -(-(j + 1) * w // pn)
                k[:, i, j] = ~mask[:, r0:r1, c0:c1].any(axis=(1, 2))
        out.append(k.reshape(b, -1))
    return np.concatenate(out, 1)


@pytest.mark.parametrize("pns", [PNS, (1, 2, 3, 5, 6, 13), (1, 3, 7)])
def test_known_tokens_match_brute_force_windows(pns):
    rng = np.random.default_rng(1)
    mask = rng.random((3, 26, 26)) < 0.05
    np.testing.assert_array_equal(edit.known_tokens(mask, pns), _brute_known(mask, pns))


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
    known = _brute_known(mask, pipe.schedule())
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


def test_cli_edit_writes_a_before_after_png(tmp_path, capsys):
    model = arjax.save(arjax.build(_meta("var")), tmp_path / "m")
    src = (np.random.default_rng(0).uniform(0, 255, (40, 48, 3))).astype(np.uint8)  # not square: centre-cropped
    Image.fromarray(src).save(tmp_path / "in.png")
    out = tmp_path / "edit.png"
    assert cli.main(["edit", "--checkpoint", str(model), "--image", str(tmp_path / "in.png"), "--mask",
                     "box:0,0,8,16", "--label", "2", "--out", str(out)]) == 0
    row = np.asarray(Image.open(out))
    assert row.shape == (SIZE, 3 * SIZE + 4, 3)
    assert "wrote" in capsys.readouterr().out
    # the middle panel greys out exactly the box
    left, mid = row[:, :SIZE].astype(int), row[:, SIZE + 2:2 * SIZE + 2].astype(int)
    assert (left[:, 8:] == mid[:, 8:]).all() and (left[:, :8] != mid[:, :8]).any()
