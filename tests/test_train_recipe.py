"""The optional parts of the VAR recipe: progressive scale training (against a transcription of the
reference's stage logic and the full-sequence forward), EMA, bf16 mixed precision, and self-correction
(targets re-quantised around injected token errors)."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.config import load_config
from arjax.nn.init import create
from arjax.nn.models.var import VAR, VARConfig
from arjax.train.losses import token_cross_entropy
from arjax.train.progressive import ProgressiveSchedule

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.py")
TINY_TOKENIZER = ["tokenizer.ch_mult=(1,2)", "tokenizer.patch_nums=(1,2,4)", "tokenizer.vocab_size=64",
                  "tokenizer.z_channels=8", "batch_size=4", "log_every=1", "sample_every=0",
                  "sample.preview_classes=2", "sample.preview_per_class=1", "optim.warmup_steps=1"]
TINY_VAR = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "batch_size=4", "log_every=1",
            "sample_every=0", "sample.preview_classes=2", "sample.preview_per_class=1", "optim.warmup_steps=2",
            "data.kwargs.num_examples=64"]


# ---- progressive stages ----------------------------------------------------------------------------
def _reference_stages(patch_nums, max_it, wp_it, pg, pg0, pgwp_it):
    """VAR's train.py stage choice + trainer.py's prog_wp bookkeeping, transcribed step by step."""
    stages, weights, last, prog_it, first = [], [], -1, 0, True
    for g_it in range(max_it):
        if g_it <= wp_it:
            si = pg0
        elif g_it >= max_it * pg:
            si = len(patch_nums) - 1
        else:
            delta = len(patch_nums) - 1 - pg0
            progress = min(max((g_it - wp_it) / (max_it * pg - wp_it), 0), 1)
            si = pg0 + round(progress * delta)
        if last != si:
            if last != -1:
                first = False
            last, prog_it = si, 0
        prog_it += 1
        wp = max(min(prog_it / pgwp_it, 1), 0.01)
        if first:
            wp = 1
        if si == len(patch_nums) - 1:
            wp = 1  # all scales: not progressive any more
        stages.append(si)
        weights.append(wp)
    return stages, weights


@pytest.mark.parametrize("max_it,wp,pg,pg0,ramp", [(300, 6, 0.8, 1, 7), (1000, 20, 0.5, 4, 30), (40, 0, 1.0, 0, 3)])
def test_progressive_stages_match_the_reference(max_it, wp, pg, pg0, ramp):
    pns = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    sched = ProgressiveSchedule(len(pns), max_it, wp, fraction=pg, first_scale=pg0, ramp_steps=ramp)
    ref_stages, ref_weights = _reference_stages(pns, max_it, wp, pg, pg0, ramp)
    stages = [sched.stage(s) for s in range(max_it)]
    assert stages == ref_stages
    np.testing.assert_allclose([sched.newest_scale_weight(st, s) for s, st in enumerate(stages)], ref_weights)
    # traced steps (inside the jitted loss) give the same weights
    traced = jax.vmap(lambda s, st=stages[max_it // 2]: jnp.asarray(sched.newest_scale_weight(st, s)))(
        jnp.arange(max_it))
    want = [sched.newest_scale_weight(stages[max_it // 2], s) for s in range(max_it)]
    np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-6)


def test_progressive_off_is_all_scales():
    sched = ProgressiveSchedule(6, 100, 10)
    assert {sched.stage(s) for s in range(100)} == {5} and sched.newest_scale_weight(5, 3) == 1.0
    with pytest.raises(ValueError, match="first_scale"):
        ProgressiveSchedule(6, 100, 10, fraction=0.5, first_scale=6)


@pytest.mark.parametrize("embed_kernel", [1, 3])
def test_prefix_forward_equals_the_full_forward_prefix(embed_kernel):
    """Block-causal attention: the logits of the first scales do not depend on later scales (nor, with a
    convolutional embedding, does a scale's embedding reach into the next scale's grid)."""
    cfg = VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=32, cvae=8, patch_nums=(1, 2, 3),
                    num_classes=5, init_adaln_gamma=0.3, embed_kernel=embed_kernel)
    model = create(VAR, cfg)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 13, 8)), jnp.float32)
    labels = jnp.asarray([1, 4])
    graphdef, state = nnx.split(model)
    # jitted: eagerly every op would compile on its own
    forward = jax.jit(lambda st, k: nnx.merge(graphdef, st)(labels, x, num_scales=k), static_argnums=1)
    with jax.default_matmul_precision("highest"):
        full = forward(state, None)
        for k, ed in ((1, 1), (2, 5)):
            part = forward(state, k)
            assert part.shape == (2, ed, 32)
            np.testing.assert_allclose(np.asarray(part), np.asarray(full[:, :ed]), rtol=1e-5, atol=1e-5)


# ---- real VAR training with the options ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from arjax.train.trainer import train
    cfg = load_config(QUICKSTART + ":tokenizer", [*TINY_TOKENIZER, "steps=2"])
    return train(cfg, tmp_path_factory.mktemp("tok") / "run", progress=False)["model_dir"]


def _var_cfg(tok, steps, extra=()):
    return load_config(QUICKSTART + ":var", [*TINY_VAR, f"tokenizer_dir={tok}", f"steps={steps}",
                                             "checkpoint.every=100", *extra])


def test_progressive_training_runs_every_stage(tmp_path, tiny_tokenizer):
    from arjax.train.trainer import train
    s = train(_var_cfg(tiny_tokenizer, 8, ["progressive.fraction=0.75", "progressive.first_scale=0",
                                           "progressive.ramp_steps=2", "optim.schedule=lin0.75"]),
              tmp_path / "run", progress=False)
    assert s["finished"] and all(np.isfinite(h["loss"]) for h in s["history"])
    # stage 0 trains 1 token, stage 1 the first 5: the mean accuracy is over what was trained, and the
    # loss (1/L weights over L = 21 tokens) is at most (tokens trained / 21) * max CE
    hist = s["history"]
    assert hist[0]["loss"] < 1 / 21 * np.log(64) * 3
    assert hist[-1]["loss"] > hist[0]["loss"]


def test_ema_is_the_exponential_average_of_the_parameters(tmp_path, tiny_tokenizer):
    from arjax.train.optim import make_optimizer
    from arjax.train.generator_tasks import VARTask
    from arjax.train.trainer import make_train_step
    cfg = _var_cfg(tiny_tokenizer, 3, ["ema_decay=0.9"])
    task = VARTask(cfg)
    tx = make_optimizer(lambda _: 1e-2)
    params = task.init_params(0)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "extra": {}, "ema": params}
    step = jax.jit(make_train_step(task, tx, 0, 0.9), static_argnums=3)
    rng = np.random.default_rng(0)
    ema = jax.tree.map(np.asarray, params)
    for _ in range(3):
        batch = {"image": jnp.asarray(rng.uniform(-1, 1, (4, task.image_size, task.image_size, 3)), jnp.float32),
                 "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32)}
        state, _ = step(state, task.constants(), batch, None)
        ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p, np.float64), ema, state["params"])
    for a, b in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(ema)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(jax.tree.leaves(state["ema"])[0]), np.asarray(jax.tree.leaves(state["params"])[0]))


def test_bf16_compute_stays_close_to_float32():
    cfg32 = VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=32, cvae=8, patch_nums=(1, 2, 3),
                      num_classes=5, init_adaln_gamma=0.3)
    params = nnx.to_pure_dict(nnx.state(create(VAR, cfg32), nnx.Param))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 13, 8)), jnp.float32)
    labels, tgt = jnp.asarray([1, 4]), jnp.asarray(rng.integers(0, 32, (2, 14)))
    out = {}
    for dt in ("float32", "bfloat16"):
        gd = nnx.split(create(VAR, dataclasses.replace(cfg32, dtype=dt)))[0]
        logits = jax.jit(lambda p, gd=gd: nnx.merge(gd, p)(labels, x))(params)  # eagerly each op compiles alone
        assert logits.dtype == jnp.float32  # the head and the loss stay in float32
        out[dt] = (np.asarray(logits), float(token_cross_entropy(logits, tgt).mean()))
    scale = np.abs(out["float32"][0]).max()
    err = np.abs(out["bfloat16"][0] - out["float32"][0]).max()
    assert 0 < err < 0.05 * scale  # bf16 really is used (8 mantissa bits), and stays close
    assert out["bfloat16"][1] == pytest.approx(out["float32"][1], rel=0.02)


@pytest.mark.slow  # ~25 s on 2 busy cores: a training run of its own (the 15 min budget)
def test_bf16_compute_trains(tmp_path, tiny_tokenizer):
    from arjax.train.trainer import train
    s = train(_var_cfg(tiny_tokenizer, 12, ["model.dtype=bfloat16", "optim.base_lr=0.05"]), tmp_path / "run",
              progress=False)
    losses = [h["loss"] for h in s["history"]]
    assert s["finished"] and np.mean(losses[-3:]) < np.mean(losses[:3])


def test_token_cache_is_built_once_and_holds_the_tokenizer_codes(tmp_path, tiny_tokenizer):
    import arjax
    from arjax.data import SyntheticShapes, TokenCache
    from arjax.train.trainer import train
    extra = ["data.cache_tokens=True", "data.kwargs.num_examples=24"]
    (tmp_path / "run" / "token_cache.tmp").mkdir(parents=True)  # debris of a run killed while encoding
    s = train(_var_cfg(tiny_tokenizer, 4, extra), tmp_path / "run", progress=False)
    assert s["finished"] and np.isfinite(s["metrics"]["loss"])
    cache = TokenCache(tmp_path / "run" / "token_cache")
    assert len(cache) == 24 and not (tmp_path / "run" / "token_cache.tmp").exists()
    tok = arjax.load_tokenizer(tiny_tokenizer)
    source = SyntheticShapes(24, tok.cfg.image_size, seed=0)
    images = np.stack([source[i]["image"] for i in range(24)]).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(np.stack([cache[i]["tokens"] for i in range(24)]), np.asarray(tok.encode(images)))
    assert [int(cache[i]["label"]) for i in range(24)] == [i % 10 for i in range(24)]
    # a longer run in the same workdir (resume) reads the same cache instead of encoding again
    mtime = (tmp_path / "run" / "token_cache" / "metadata.json").stat().st_mtime_ns
    train(_var_cfg(tiny_tokenizer, 4, extra), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "token_cache" / "metadata.json").stat().st_mtime_ns == mtime


# ---- self-correction (loss.self_correction) ----------------------------------------------------------
def _quantizer(patch_nums=(1, 2, 3, 4), vocab=16, channels=4):
    from arjax.nn.tokenizers.msvq import MultiScaleQuantizer, VQVAEConfig
    cfg = VQVAEConfig(vocab_size=vocab, z_channels=channels, patch_nums=patch_nums)
    return MultiScaleQuantizer(cfg, rngs=nnx.Rngs(0))


def _features(q, batch=64, seed=1):
    # features of the codebook's scale, so that every scale picks among several codes
    full = q.patch_nums[-1]
    return 0.05 * jax.random.normal(jax.random.key(seed), (batch, full, full, q.embedding.shape[1]))


# (the quantizer's calls below run under nnx.jit: eagerly every op compiles on its own, ~30 s of compiling)
def test_self_correction_without_errors_is_plain_teacher_forcing():
    @nnx.jit
    def run(q, f):
        targets, fed, x_in = q.quantize_self_correcting(f, jax.random.key(0), 0.0)
        tokens = jnp.concatenate(q.quantize(f)[0], axis=1)
        return targets, fed, x_in, tokens, q.indices_to_var_input(tokens)

    q = _quantizer()
    targets, fed, x_in, tokens, teacher_forcing = run(q, _features(q))
    np.testing.assert_array_equal(targets, tokens)
    np.testing.assert_array_equal(fed, tokens)
    np.testing.assert_allclose(x_in, teacher_forcing, rtol=0, atol=1e-7)


def test_self_correction_targets_correct_the_errors_fed_so_far():
    from arjax.ops.resample import resize_area
    max_rate = 0.6

    @nnx.jit
    def run(q, f):
        targets, fed, x_in = q.quantize_self_correcting(f, jax.random.key(3), max_rate)
        # each scale's target should be the nearest code to what the fed tokens of the earlier scales left of f
        fhats = q.indices_to_fhat(fed, cumulative=True)
        expected = [q.nearest(resize_area(f, 1))] + [q.nearest(resize_area(f - fhats[si - 1], pn))
                                                     for si, pn in enumerate(q.patch_nums) if si]
        return targets, fed, x_in, q.indices_to_var_input(fed), expected

    q = _quantizer()
    targets, fed, x_in, teacher_forcing, expected = run(q, _features(q))
    # inputs are the teacher forcing of the tokens actually fed (errors included)
    np.testing.assert_allclose(x_in, teacher_forcing, atol=1e-6)
    per_scale = q.split_scales(targets)
    np.testing.assert_array_equal(per_scale[0], expected[0])
    for si in range(1, len(q.patch_nums)):
        assert np.mean(np.asarray(per_scale[si]) == np.asarray(expected[si])) > 0.99  # argmin ties aside
    # replacements: a random code (the same one by chance 1/vocab), at a per-image rate ~ U[0, max_rate]
    replaced = np.asarray(targets != fed).mean()
    expected_share = max_rate / 2 * (1 - 1 / q.embedding.shape[0])
    assert abs(replaced - expected_share) < 0.05, (replaced, expected_share)
    per_image = np.asarray(targets != fed).mean(axis=1)
    assert per_image.min() < 0.1 and per_image.max() > 0.35  # the rate varies from image to image


def test_var_trains_with_self_correction_from_cached_features(tmp_path, tiny_tokenizer):
    from arjax.data import TokenCache
    from arjax.train.trainer import train
    extra = ["data.cache_tokens=True", "data.kwargs.num_examples=24", "loss.self_correction=0.5",
             "optim.base_lr=0.05"]
    s = train(_var_cfg(tiny_tokenizer, 12, extra), tmp_path / "run", progress=False)
    losses = [h["loss"] for h in s["history"]]
    assert s["finished"] and np.mean(losses[-3:]) < np.mean(losses[:3])
    cache = TokenCache(tmp_path / "run" / "token_cache")
    # the cached features quantise to the cached tokens
    import arjax
    tok = arjax.load_tokenizer(tiny_tokenizer).module
    feats = np.stack([cache[i]["features"] for i in range(8)])
    np.testing.assert_array_equal(jnp.concatenate(tok.quantize.quantize(feats)[0], axis=1),
                                  np.stack([cache[i]["tokens"] for i in range(8)]))


def test_self_correction_errors_name_the_key(tmp_path, tiny_tokenizer):
    from arjax.data import write_token_cache
    from arjax.train.trainer import train
    with pytest.raises(ValueError, match="loss.self_correction"):
        train(_var_cfg(tiny_tokenizer, 1, ["loss.self_correction=1.5"]), tmp_path / "a", progress=False)
    write_token_cache(tmp_path / "cache", np.zeros((8, 21), int), np.zeros(8, int), vocab=64)
    cfg = _var_cfg(tiny_tokenizer, 1, ["loss.self_correction=0.3", "data.name=tokens"])
    cfg.data.kwargs = {"path": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match="loss.self_correction.*holds tokens only"):
        train(cfg, tmp_path / "b", progress=False)
