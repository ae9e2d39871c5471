"""MaskGIT: the training mask and loss, the bidirectional model, the iterative decoder (schedule, forced
tokens, guidance, per-sample keys) and the options, each against an independent NumPy / analytic
computation; then the member end to end through `arjax train`, `arjax sample` and `arjax edit`.

The model and sampler tests use a tiny random model and a stub tokenizer (the sampler only decodes at the
end): no tokenizer graph to compile."""
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import float64_cross_entropy
from arjax.nn.models.maskgit import MaskGIT, MaskGITConfig
from arjax.sample.masked import masked_after, sample_maskgit
from arjax.train.maskgit_task import choose_positions, mask_counts, masked_loss, random_mask

REPO = Path(__file__).resolve().parents[1]
FAMILY = str(REPO / "configs" / "family.py")
CFG = MaskGITConfig(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=32, num_classes=4, block_size=16)
L, V = CFG.block_size, CFG.vocab_size


def random_model(cfg=CFG, seed=0):
    """N(0, 0.3^2) parameters (the real init zeroes the head: every logit would be 0)."""
    from arjax.nn.init import abstract_module
    module, rng = abstract_module(MaskGIT, cfg), np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype),
                                                 nnx.to_pure_dict(state)))
    nnx.update(module, state)
    return module


class StubTokenizer:
    def decode(self, tokens, patch_nums):
        return jnp.zeros((tokens.shape[0], 4, 4, 3)) + tokens[:, :1, None, None] * 0.0


def sample_keys(seed, n):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def sampler(model):
    """One jitted sampler (static options as keywords), the model's state an argument."""
    gd, st = nnx.split(model)
    fn = jax.jit(lambda s, y, k, cfg, ft, fm, **kw: sample_maskgit(StubTokenizer(), nnx.merge(gd, s), y, k, cfg=cfg,
                                                                    forced_tokens=ft, forced_mask=fm, **kw),
                 static_argnames=("iterations", "choice_temperature", "temperature", "top_k", "top_p"))
    return lambda y, k, cfg=1.0, ft=None, fm=None, **kw: fn(st, jnp.asarray(y), k, jnp.float32(cfg), ft, fm, **kw)


# ---- training mask and loss ------------------------------------------------------------------------
def test_mask_counts_follow_the_cosine_cdf():
    """Over many draws, P(count <= k) = P(ceil(L cos(pi/2 U)) <= k) = 1 - (2/pi) arccos(k / L)."""
    n = 20000
    counts = np.asarray(random_mask(jax.random.key(0), n, L)).sum(1)
    assert counts.min() >= 1 and counts.max() <= L
    for k in range(1, L + 1):
        want = 1.0 if k == L else 1 - 2 / np.pi * np.arccos(k / L)
        assert abs(np.mean(counts <= k) - want) < 0.015, k  # 4+ sigma at n = 20000


def test_mask_counts_formula_and_clamp():
    r = np.random.default_rng(0).uniform(0, 1, 2000).astype(np.float32)
    exact = L * np.cos(np.pi / 2 * r.astype(np.float64))
    keep = np.abs(exact - np.round(exact)) > 1e-4  # float32 may round an exact integer either way
    want = np.clip(np.ceil(exact), 1, L)
    np.testing.assert_array_equal(np.asarray(mask_counts(jnp.asarray(r), L))[keep], want[keep])
    assert list(np.asarray(mask_counts(jnp.asarray([0.0, 0.9999999], jnp.float32), L))) == [L, 1]


def test_masked_positions_are_exactly_the_count_and_uniform():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, L + 1, 6000)
    masked = np.asarray(choose_positions(jax.random.key(1), jnp.asarray(counts, jnp.int32), L))
    np.testing.assert_array_equal(masked.sum(1), counts)
    one = masked[counts == 1]  # a single masked token is at each position with probability 1 / L
    freq = one.mean(0)
    assert np.abs(freq - 1 / L).max() < 5 * math.sqrt((1 / L) * (1 - 1 / L) / len(one)), freq


def test_masked_loss_matches_float64_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (3, L, V)).astype(np.float32)
    tokens = rng.integers(0, V, (3, L))
    masked = rng.uniform(size=(3, L)) < 0.4
    masked[0] = False  # a sample with nothing masked adds nothing
    loss, acc = masked_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(masked), 0.1)
    ce = float64_cross_entropy(logits, tokens, 0.1)
    assert abs(float(loss) - (ce * masked).sum() / masked.sum()) < 1e-5
    hit = logits.argmax(-1) == tokens
    assert abs(float(acc) - 100 * (hit & masked).sum() / masked.sum()) < 1e-4


def _task(patch_nums=(4,)):
    from arjax.config import load_config
    from arjax.nn.tokenizers.flexvq import FlexVQConfig
    from arjax.train.maskgit_task import MaskGITTask
    cfg = load_config(f"{FAMILY}:maskgit", ["tokenizer_dir=/nonexistent", "model.dim=32", "model.n_layer=2",
                                            "model.n_head=2", "model.num_classes=4", "loss.label_smoothing=0.1"])
    tok = FlexVQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, vocab_size=V, z_channels=8, enc_channels=8,
                       patch_nums=patch_nums, using_sa=False, using_mid_sa=False)
    return MaskGITTask(cfg, abstract_tokenizer=tok)


def test_task_loss_hides_the_masked_tokens(model):
    """member_loss = the float64 masked CE of the model's logits on the input with the chosen positions set
    to [MASK]; the true tokens there never reach the model (changing them changes only the targets)."""
    task = _task()
    assert task.model_cfg.block_size == L and task.model_cfg.vocab_size == V
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, V, (4, L)).astype(np.int32)
    labels = np.array([0, 1, 4, 2], np.int32)  # 4: the null class
    key = jax.random.key(5)
    masked = np.asarray(random_mask(key, 4, L))
    other = np.where(masked, (tokens + 1) % V, tokens).astype(np.int32)  # differs only where masked
    inputs = np.where(masked, V, tokens)
    logits = np.asarray(model(jnp.asarray(labels), jnp.asarray(inputs)))
    for tgt in (tokens, other):
        loss, metrics = task.member_loss(model, None, jnp.asarray(tgt), jnp.asarray(labels), key, 0, None)
        ce = float64_cross_entropy(logits, tgt, 0.1)
        assert abs(float(loss) - (ce * masked).sum() / masked.sum()) < 1e-4
        assert abs(float(metrics["mask_ratio"]) - masked.mean()) < 1e-6
    with pytest.raises(ValueError, match="maskgit trains on a one-scale"):
        _task(patch_nums=(1, 2, 4))


# ---- the model ------------------------------------------------------------------------------------------
def test_model_is_bidirectional_and_class_conditional(model):
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, V, (1, L)).astype(np.int32)
    later = tokens.copy()
    later[0, -1] = (later[0, -1] + 1) % V
    run = jax.jit(model.__call__)
    a, b = np.asarray(run(jnp.array([1]), tokens)), np.asarray(run(jnp.array([1]), later))
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-3  # position 0 sees the last token
    c = np.asarray(run(jnp.array([2]), tokens))
    assert np.abs(a - c).max() > 1e-3  # the class token reaches every position
    assert a.shape == (1, L, V)


def test_fully_masked_input_sees_positions_not_tokens(model):
    """With every token [MASK] the model still tells positions apart (2D RoPE), and the member's
    teacher-forced logits (the first decoding step's) do not depend on the tokens passed."""
    from arjax.members.maskgit import logits as member_logits
    y = jnp.array([0, 3])
    first = np.asarray(model(y, jnp.full((2, L), V, jnp.int32)))
    assert min(np.abs(first[:, i] - first[:, j]).max() for i in range(L) for j in range(i)) > 1e-4
    rng = np.random.default_rng(6)
    for _ in range(2):
        t = jnp.asarray(rng.integers(0, V, (2, L)), jnp.int32)
        np.testing.assert_array_equal(np.asarray(member_logits(None, model, y, t)), first)


# ---- the decoder ----------------------------------------------------------------------------------------
def known_counts(unknown: int, steps: int) -> list[int]:
    """Tokens known after each step, written from the rule directly (independent of `masked_after`): the
    cosine curve over the unknown tokens, at least one new token per step while any is left, all at the end."""
    out, known = [], 0
    for t in range(1, steps + 1):
        target = unknown if t == steps else unknown - int(np.floor(unknown * np.cos(np.pi * t / (2 * steps))))
        known = min(unknown, max(target, known + 1))
        out.append(known)
    return out


def test_decoding_schedule_formula():
    for unknown in range(0, 40):
        for steps in range(1, 20):
            want = [unknown - k for k in known_counts(unknown, steps)]
            assert masked_after(unknown, steps) == want, (unknown, steps)
    assert masked_after(16, 3) == [13, 8, 0]  # 16 cos(pi/3) = 8 exactly: float64 keeps it


@pytest.mark.parametrize("steps", [1, 5, 16])
def test_sampler_fixes_the_scheduled_count_each_step(sampler, steps):
    _, tokens, _, known = sampler([0, 1], sample_keys(0, 2), iterations=steps)
    known = np.asarray(known)
    assert known.shape == (2, steps, L) and known[:, -1].all()
    assert (known[:, 1:] >= known[:, :-1]).all()  # a known token is never re-masked
    np.testing.assert_array_equal(known.sum(-1), np.broadcast_to(known_counts(L, steps), (2, steps)))
    assert np.asarray(tokens).min() >= 0 and np.asarray(tokens).max() < V


def test_forced_tokens_survive_and_are_never_remasked(sampler):
    rng = np.random.default_rng(7)
    forced = jnp.asarray(rng.integers(0, V, (3, L)), jnp.int32)
    fmask = rng.uniform(size=(3, L)) < np.array([[0.0], [0.5], [0.9]])
    _, tokens, _, known = sampler([0, 1, 2], sample_keys(1, 3), cfg=2.0, ft=forced, fm=jnp.asarray(fmask),
                                  iterations=6)
    tokens, known = np.asarray(tokens), np.asarray(known)
    np.testing.assert_array_equal(tokens[fmask], np.asarray(forced)[fmask])
    assert known[np.broadcast_to(fmask[:, None], known.shape)].all()  # known at every step
    assert (known[:, 1:] >= known[:, :-1]).all()
    for i in range(3):
        f = int(fmask[i].sum())
        np.testing.assert_array_equal(known[i].sum(-1), f + np.asarray(known_counts(L - f, 6)))


def reference_decode(model, labels, keys, *, cfg, steps, choice_temperature):
    """MaskGIT's decoder in NumPy float64 around separate cond / uncond model calls (no filters, temperature
    1), drawing from the documented keys: categorical from fold_in(fold_in(key, t), 0), Gumbel noise from
    fold_in(fold_in(key, t), 1)."""
    b = len(labels)
    run = jax.jit(model.__call__)
    tokens = np.full((b, L), V, np.int64)
    known = np.zeros((b, L), bool)
    top2 = np.zeros((b, L, 2))
    for t in range(steps):
        cond = np.asarray(run(jnp.asarray(labels), jnp.asarray(tokens, jnp.int32)), np.float64)
        if cfg > 1:
            unc = np.asarray(run(jnp.full(b, CFG.num_classes), jnp.asarray(tokens, jnp.int32)), np.float64)
            logits = unc + cfg * (cond - unc)
        else:
            logits = cond
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        remain = L - known_counts(L, steps)[t]
        new_known = known.copy()
        for i in range(b):
            k = jax.random.fold_in(keys[i], t)
            drawn = np.asarray(jax.random.categorical(jax.random.fold_in(k, 0), jnp.asarray(logp[i], jnp.float32)))
            drawn = np.where(known[i], tokens[i], drawn)
            g = np.asarray(jax.random.gumbel(jax.random.fold_in(k, 1), (L,)), np.float64)
            conf = logp[i, np.arange(L), drawn] + choice_temperature * (1 - (t + 1) / steps) * g
            conf[known[i]] = np.inf
            keep = np.ones(L, bool)
            keep[np.argsort(conf, kind="stable")[:remain]] = False
            fixed = keep & ~known[i]
            top2[i, fixed] = np.sort(logits[i, fixed], -1)[:, ::-1][:, :2]
            tokens[i] = np.where(keep, drawn, V)
            new_known[i] = keep
        known = new_known
    return tokens, top2


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_sampler_matches_a_numpy_decoder(model, sampler, cfg):
    """cfg = 1 is the conditional model alone (the reference never runs the unconditional one); cfg = 3
    guides as uncond + cfg (cond - uncond). Same tokens, and top-2 logits at the step each was fixed."""
    labels, keys = np.array([0, 3, 1]), sample_keys(2, 3)
    _, tokens, top2, _ = sampler(labels, keys, cfg=cfg, iterations=4, choice_temperature=4.5)
    want_tokens, want_top2 = reference_decode(model, labels, keys, cfg=cfg, steps=4, choice_temperature=4.5)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
    np.testing.assert_allclose(np.asarray(top2), want_top2, atol=1e-4)


def test_a_sample_does_not_depend_on_its_batch_mates(sampler):
    keys = sample_keys(3, 4)
    _, together, _, _ = sampler([0, 1, 2, 3], keys, cfg=2.0, iterations=4, top_k=8, top_p=0.9)
    _, pair, _, _ = sampler([3, 2], keys[jnp.array([3, 2])], cfg=2.0, iterations=4, top_k=8, top_p=0.9)
    np.testing.assert_array_equal(np.asarray(pair), np.asarray(together)[[3, 2]])  # other mates, order, size
    assert (np.asarray(together)[0] != np.asarray(together)[1]).any()


# ---- options -------------------------------------------------------------------------------------------
def test_options_validate_and_name_the_option():
    from arjax import members
    opts = members.member("maskgit").options_cls
    assert opts.parse({"iterations": 12, "choice_temperature": 0}, CFG, "maskgit").iterations == 12
    for given, msg in [({"iterations": 0}, "iterations must be >= 1"),
                       ({"iterations": L + 1}, "iterations must be at most the 16 image tokens"),
                       ({"choice_temperature": -1.0}, "choice_temperature must be >= 0"),
                       ({"temperature": 0.0}, "temperature must be > 0"),
                       ({"cfg_interval": 2}, "do not apply to maskgit")]:
        with pytest.raises(ValueError, match=msg):
            opts.parse(given, CFG, "maskgit")


def test_cli_help_offers_the_options_once():
    from arjax.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices["sample"]
    flags = {a.option_strings[0]: a.help for a in sub._actions if a.option_strings}
    assert flags["--iterations"].startswith("MaskGIT:") and flags["--choice-temperature"].startswith("MaskGIT:")
    assert "LlamaGen:" in flags["--temperature"] and "MaskGIT:" in flags["--temperature"]  # one shared flag


# ---- end to end through the CLI --------------------------------------------------------------------------
@pytest.mark.slow  # ~55-85 s on 2 cores: two trainings, a sample grid and an edit
def test_cli_trains_samples_and_edits(tmp_path, capsys):
    import json

    from PIL import Image

    import arjax
    from arjax import cli
    sets = lambda items: [a for s in items for a in ("--set", s)]  # noqa: E731
    tok_dir, gen_dir = tmp_path / "tok", tmp_path / "maskgit"
    assert cli.main(["train", "--config", f"{FAMILY}:vq_tokenizer:tiny", "--workdir", str(tok_dir),
                     *sets(["steps=4"])]) == 0
    assert cli.main(["train", "--config", f"{FAMILY}:maskgit:tiny", "--workdir", str(gen_dir),
                     *sets(["steps=30", "optim.base_lr=2e-2", "sample.iterations=4",
                            f"tokenizer_dir={tok_dir / 'model'}"])]) == 0
    summary = json.loads((gen_dir / "summary.json").read_text())
    hist = [h["loss"] for h in summary["history"]]
    assert summary["finished"] and np.mean(hist[-6:]) < np.mean(hist[:6])
    model_dir = gen_dir / "model"
    assert json.loads((model_dir / "arjax.json").read_text())["family"] == "maskgit"

    png = tmp_path / "grid.png"
    assert cli.main(["sample", "--checkpoint", str(model_dir), "--classes", "0,1", "--per-class", "2", "--top-k", "0",
                     "--top-p", "0", "--iterations", "4", "--choice-temperature", "2", "--temperature", "0.9",
                     "--out", str(png)]) == 0
    assert png.is_file()
    assert cli.main(["sample", "--checkpoint", str(model_dir), "--classes", "0", "--iterations", "17",
                     "--out", str(png)]) == 2
    assert "iterations must be at most" in capsys.readouterr().err

    pipe = arjax.load(model_dir)
    imgs, tokens = pipe.sample([0, 1], top_k=0, top_p=0.0, iterations=4, return_tokens=True)
    src = np.asarray(imgs) * 2 - 1
    Image.fromarray((np.asarray(imgs[0]) * 255).astype(np.uint8)).save(tmp_path / "src.png")
    out = tmp_path / "edit.png"
    assert cli.main(["edit", "--checkpoint", str(model_dir), "--image", str(tmp_path / "src.png"), "--mask",
                     "box:0,8,16,16", "--label", "1", "--iterations", "3", "--out", str(out)]) == 0
    assert out.is_file()
    mask = np.zeros((16, 16), bool)
    mask[8:, :] = True  # the bottom half regenerated: the top half's tokens are forced
    _, etoks = pipe.edit(src, mask, label=[0, 1], top_k=1, iterations=3, return_tokens=True)
    np.testing.assert_array_equal(np.asarray(etoks)[:, :8], np.asarray(pipe.tokenizer.encode(src))[:, :8])
