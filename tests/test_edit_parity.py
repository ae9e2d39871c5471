"""Zero-shot editing parity with the official VAR demo (`demo_zero_shot_edit.ipynb`), fixture `var_tiny`
(`edit_cases.npz`, `edit_config.json`; see the fixture README's section "Zero-shot editing").

Three runs, greedy (top_k = 1) with cfg 3.0: `inpaint` (a box regenerated, unconditional label 1000),
`outpaint` (all but a box regenerated, label 1000) and `class_edit` (a box regenerated as class 980).
Each goes through the public `Pipeline.edit` with a pixel mask (True = regenerate) built from the
fixture's 16 x 16 keep mask, all three in one call (one compilation): every token must equal the
fixture's, the image must lie within 5e-4, and the known-token masks must equal the fixture's forced
positions. The guided top-2 logits are checked through the sampler itself (the pipeline returns no
logits).
"""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close, nhwc

from arjax.sample import edit

ATOL_IMG = 5e-4   # the fixture README's tolerance for decoded images
ATOL_FEAT = 1e-4  # logits
RUNS = ("inpaint", "outpaint", "class_edit")
DOWN = 16         # var_tiny: 256 px images, 16 x 16 finest tokens


@pytest.fixture(scope="module")
def edit_cases(var_tiny_files):
    f = var_tiny_files / "edit_cases.npz"
    if not f.is_file() or not (var_tiny_files / "edit_config.json").is_file():
        pytest.skip(reason=f"{f} (or edit_config.json) is absent: the var_tiny fixture predates the editing cases")
    with np.load(f) as z:
        cases = {k: z[k] for k in z.files}
    cases["config"] = json.loads((var_tiny_files / "edit_config.json").read_text())
    return cases


def pixel_mask(keep_grid: np.ndarray) -> np.ndarray:
    """The demo's finest-grid keep mask (1 = keep) -> the pixel mask Pipeline.edit takes (True = regenerate)."""
    return ~np.kron(keep_grid.astype(bool), np.ones((DOWN, DOWN), bool))


@pytest.fixture(scope="module")
def batch(edit_cases):
    """The three runs stacked into one batch of 6: images, pixel masks, labels, cfg."""
    cfgs = {edit_cases["config"]["runs"][r]["cfg"] for r in RUNS}
    assert len(cfgs) == 1, "the runs use one cfg, so one call serves them all"
    x = np.concatenate([nhwc(edit_cases["image"])] * len(RUNS))
    masks = np.concatenate([np.broadcast_to(pixel_mask(edit_cases[f"{r}_keep_mask"]), (2, 256, 256)) for r in RUNS])
    labels = np.concatenate([edit_cases[f"{r}_labels"] for r in RUNS]).astype(np.int32)
    return x, masks, labels, cfgs.pop()


@pytest.fixture(scope="module")
def edited(var_tiny_pipe, batch):
    x, masks, labels, cfg = batch
    images, tokens = var_tiny_pipe.edit(x, masks, label=labels, cfg=cfg, top_k=1, top_p=0.0, seed=0,
                                        return_tokens=True)
    return np.asarray(images), np.asarray(tokens)


def _run(i):
    return slice(2 * i, 2 * i + 2)


def test_fixture_masks_are_the_demo_boxes(edit_cases):
    """The keep masks are get_edit_mask's: round(box * 16), inverted for inpainting."""
    for r in RUNS:
        run = edit_cases["config"]["runs"][r]
        y0, x0, y1, x1 = (round(v * DOWN) for v in run["box_y0x0y1x1"])
        box = np.zeros((DOWN, DOWN), bool)
        box[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(edit_cases[f"{r}_keep_mask"].astype(bool), ~box if run["inpainting"] else box)


def test_known_tokens_equal_the_fixture_forced_positions(var_tiny_pipe, edit_cases):
    pns = var_tiny_pipe.schedule()
    for r in RUNS:
        mask = pixel_mask(edit_cases[f"{r}_keep_mask"])[None]
        np.testing.assert_array_equal(edit.keep_grid(mask, pns[-1])[0], edit_cases[f"{r}_keep_mask"])
        known = edit.known_tokens(mask, pns)[0]
        forced = edit_cases[f"{r}_forced"].astype(bool)
        bad = np.flatnonzero(known != forced)
        assert bad.size == 0, f"{r}: {bad.size} known-token flag(s) differ from the demo's, first at {bad[:5].tolist()}"
        assert known[0], f"{r}: the 1 x 1 scale must be forced"


def test_source_tokens_are_the_fixture_gt_idx(var_tiny_pipe, edit_cases):
    """What Pipeline.edit forces: the encoder's tokens of the image (vae.img_to_idxBl in the demo)."""
    src = np.asarray(var_tiny_pipe.tokenizer.encode(nhwc(edit_cases["image"])))
    np.testing.assert_array_equal(src, edit_cases["gt_idx"])


@pytest.mark.parametrize("i, run", list(enumerate(RUNS)))
def test_edit_tokens_equal_the_demo(edited, edit_cases, i, run):
    tokens = edited[1][_run(i)]
    want = edit_cases[f"{run}_tokens"]
    bad = np.argwhere(tokens != want)
    assert bad.size == 0, (f"{run}: {len(bad)} token(s) differ from the demo's, first at (b, pos) "
                           f"{bad[:5].tolist()}")
    forced = edit_cases[f"{run}_forced"].astype(bool)
    np.testing.assert_array_equal(tokens[:, forced], edit_cases["gt_idx"][:, forced])


@pytest.mark.parametrize("i, run", list(enumerate(RUNS)))
def test_edit_image_matches_the_demo(edited, edit_cases, i, run):
    img = edited[0][_run(i)]
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert_close(f"{run} image", img, nhwc(edit_cases[f"{run}_image"]), ATOL_IMG)


def test_edit_guided_top2_matches_the_demo(var_tiny_pipe, batch, edit_cases):
    """The sampler fed the same forced tokens returns the guided logits' top-2 at every position."""
    from arjax.sample.next_scale import sample_next_scale

    x, masks, labels, cfg = batch
    pipe = var_tiny_pipe
    known = edit.known_tokens(masks, pipe.schedule())
    source = np.concatenate([edit_cases["gt_idx"]] * len(RUNS)).astype(np.int32)
    tgd, mgd = pipe.tokenizer.graphdef, pipe.graphdef

    @jax.jit
    def run(ts, ms, y, keys, ft, fm):
        return sample_next_scale(nnx.merge(tgd, ts), nnx.merge(mgd, ms), y, keys, cfg=cfg, top_k=1, top_p=0.0,
                                 forced_tokens=ft, forced_mask=fm)

    keys = jax.random.split(jax.random.key(0), len(labels))
    _, tokens, top2 = run(pipe.tokenizer.state, pipe.state, labels, keys, source, known)
    want = np.concatenate([edit_cases[f"{r}_top2"] for r in RUNS])
    np.testing.assert_array_equal(np.asarray(tokens), np.concatenate([edit_cases[f"{r}_tokens"] for r in RUNS]))
    assert_close("edit top-2 guided logits", np.asarray(top2), want, ATOL_FEAT)
