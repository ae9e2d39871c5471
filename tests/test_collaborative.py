"""Collaborative decoding (CoDe): a drafter for the first scales, a refiner for the rest, on one tokenizer."""
import dataclasses

import numpy as np
import pytest

import arjax
from arjax.nn.models.var import VARConfig
from arjax.nn.tokenizers.msvq import VQVAEConfig
from arjax.ops import scales

PNS = (1, 2, 3, 4)
TOK = VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=128, z_channels=8, patch_nums=PNS)
KW = dict(cfg=1.5, top_k=20, top_p=0.9, seed=3, return_tokens=True)
LABELS = np.array([1, 7, 3, 0])


def _pipe(depth, width, seed=0):
    model = VARConfig(depth=depth, embed_dim=width, num_heads=2, vocab_size=128, cvae=8, patch_nums=PNS,
                      num_classes=10, init_adaln_gamma=0.5, init_head=1.0)  # blocks and head matter
    return arjax.build({"family": "var", "tokenizer": dataclasses.asdict(TOK), "model": dataclasses.asdict(model)},
                       seed=seed)


@pytest.fixture(scope="module")
def drafter():
    return _pipe(3, 64)


@pytest.fixture(scope="module")
def refiner():
    return _pipe(1, 32)  # same seed: the same tokenizer weights, another transformer


@pytest.mark.parametrize("draft", [pytest.param(0, marks=pytest.mark.slow), 2,
                                   pytest.param(len(PNS), marks=pytest.mark.slow)])
def test_drafter_as_its_own_refiner_is_the_single_model_sampler(drafter, draft):
    """The refiner's cache filled in one block-causal pass equals the one built scale by scale: with
    drafter = refiner every token is the single-model sampler's, wherever the hand-over is."""
    _, alone = drafter.sample(LABELS, **KW)
    _, code = drafter.sample(LABELS, refiner=drafter, draft_scales=draft, **KW)
    np.testing.assert_array_equal(np.asarray(code), np.asarray(alone))


def test_split_is_honoured(drafter, refiner):
    """Scales < draft_scales are the drafter's tokens; the rest are what the refiner samples when the
    drafted scales are teacher-forced into it (`complete`, its own scale-by-scale cache, same keys)."""
    draft = 2
    end = scales.begin_ends(PNS)[draft - 1][1]
    _, code = map(np.asarray, drafter.sample(LABELS, refiner=refiner, draft_scales=draft, **KW))
    _, big = map(np.asarray, drafter.sample(LABELS, **KW))
    _, small = map(np.asarray, refiner.sample(LABELS, **KW))
    np.testing.assert_array_equal(code[:, :end], big[:, :end])
    known = np.zeros_like(code, bool)
    known[:, :end] = True
    _, refined = refiner.complete(code, known, LABELS, **KW)
    np.testing.assert_array_equal(code, np.asarray(refined))
    # not vacuous: the two models disagree on both parts
    assert (code[:, end:] != big[:, end:]).any() and (small[:, :end] != code[:, :end]).any()


def test_bad_refiners_are_named(drafter):
    with pytest.raises(ValueError, match="different tokenizers"):
        drafter.sample(LABELS[:1], refiner=_pipe(1, 32, seed=5), draft_scales=2)
    with pytest.raises(ValueError, match="draft_scales"):
        drafter.sample(LABELS[:1], refiner=drafter, draft_scales=len(PNS) + 1)
    with pytest.raises(ValueError, match="draft_scales"):
        drafter.sample(LABELS[:1], refiner=drafter)
    with pytest.raises(TypeError, match="arjax.Pipeline"):
        drafter.sample(LABELS[:1], refiner="runs/small", draft_scales=2)


@pytest.mark.slow
def test_cli_sample_with_a_refiner(drafter, refiner, tmp_path):
    from arjax import cli
    big, small = arjax.save(drafter, tmp_path / "big"), arjax.save(refiner, tmp_path / "small")
    out = tmp_path / "code.npz"
    args = ["sample", "--checkpoint", str(big), "--classes", "1,7", "--per-class", "1", "--top-k", "20", "--top-p",
            "0.9", "--seed", "3", "--npz", str(out)]
    assert cli.main(args + ["--refiner", str(small), "--draft-scales", "2"]) == 0
    want = drafter.sample(np.array([1, 7]), cfg=1.5, top_k=20, top_p=0.9, seed=3, refiner=refiner, draft_scales=2)
    want = np.clip(np.round(np.asarray(want) * 255), 0, 255).astype(np.uint8)
    assert np.abs(np.load(out)["arr_0"].astype(int) - want).max() <= 1
    assert cli.main(args + ["--refiner", str(small)]) == 2  # the hand-over scale is required
