"""The family through the generic trainer, pipeline and configs: FlexVAR's tokenizer and transformer
and HMAR train from `configs/family.py` with the same trainer, load with `arjax.load`, and sample with
their sampling-time options (FlexVAR: another schedule and resolution; HMAR: masked steps). FlexVAR's
training sub-schedules select tokens of the full schedule, checked against encoding at the sub-schedule."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax
from arjax.config import load_config
from arjax import members
from arjax.train.generator_tasks import train_schedules

REPO = Path(__file__).resolve().parents[1]
FAMILY = str(REPO / "configs" / "family.py")


def test_train_schedules_keep_the_ends_and_are_distinct():
    full = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    got = train_schedules(full, 6, 4, seed=0)
    assert got[0] == full and len(got) == len(set(got)) == 6
    for s in got:
        assert s[0] == 1 and s[-1] == 16 and len(s) >= 4 and set(s) <= set(full) and list(s) == sorted(s)
    assert got == train_schedules(full, 6, 4, seed=0)  # a pure function of the seed (resumption)
    assert len(train_schedules((1, 2, 4), 5, 2, seed=0)) == 2  # only (1,2,4) and (1,4) exist
    with pytest.raises(ValueError, match="flex.min_scales"):
        train_schedules(full, 3, 1, seed=0)


def test_flexvq_sub_schedule_tokens_are_a_selection_of_the_full_schedule():
    """Every scale is quantised on its own, so FlexVAR's trainer may cut sub-schedules out of cached
    full-schedule tokens: the result must equal encoding at the sub-schedule directly."""
    from arjax.nn.init import create
    from arjax.nn.tokenizers.flexvq import FlexVQConfig, FlexVQVAE
    full = (1, 2, 3, 4, 6, 8)
    tok = create(FlexVQVAE, FlexVQConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, vocab_size=64, z_channels=8,
                                         enc_channels=8, patch_nums=full, using_sa=False), 0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    encode = jax.jit(lambda x, pns: tok.encode(x, patch_nums=pns), static_argnums=1)
    tokens = np.asarray(encode(x, full))
    starts = dict(zip(full, np.cumsum([0] + [p * p for p in full])))
    for sub in train_schedules(full, 3, 3, seed=1)[1:]:
        picked = np.concatenate([tokens[:, starts[p]:starts[p] + p * p] for p in sub], axis=1)
        np.testing.assert_array_equal(picked, np.asarray(encode(x, sub)))


@pytest.mark.parametrize("stage", ["var", "hmar", "flexvar"])
def test_family_configs_apply_to_their_members(stage):
    """Every model key of each member's config is one its model takes (the task would name a stray one)."""
    from arjax.plan import _abstract_task
    cfg = load_config(f"{FAMILY}:{stage}", ["tokenizer_dir=/nonexistent"])
    task = _abstract_task(cfg, members.task_class(cfg.task))
    assert task.member.name == stage and isinstance(task, members.member(stage).task_cls)
    bad = load_config(f"{FAMILY}:var", ["tokenizer_dir=/nonexistent"])
    bad.model.pos_grid = 8  # a FlexVAR key in a VAR config
    with pytest.raises(ValueError, match="model.pos_grid"):
        _abstract_task(bad, members.task_class(bad.task))


@pytest.fixture(scope="module")
def flex_run(tmp_path_factory):
    from arjax.train.trainer import train
    root = tmp_path_factory.mktemp("flex")
    # a 3-scale tokenizer without mid attention: its step decodes every scale, which dominates compile time
    tok = train(load_config(f"{FAMILY}:flex_tokenizer:tiny", ["tokenizer.patch_nums=(1,2,4)", "steps=4"]),
                root / "tok", progress=False)
    cfg = load_config(f"{FAMILY}:flexvar:tiny", ["steps=24", "optim.base_lr=2e-2",
                                            f"tokenizer_dir={tok['model_dir']}", "model.pos_grid=8",
                                            "model.max_pn=4", "flex.min_scales=2",
                                            "flex.num_schedules=2"])  # two compiled steps
    return tok, train(cfg, root / "var", progress=False), cfg


@pytest.mark.slow  # ~50 s alone (two trainings); FlexVAR's model and sampler: test_parity_flexvar, test_edit
def test_flexvar_trains_and_samples_at_another_resolution(flex_run):
    tok_summary, summary, cfg = flex_run
    assert tok_summary["finished"] and summary["finished"]
    assert arjax.load_tokenizer(tok_summary["model_dir"]).any_schedule
    hist = [h["loss"] for h in summary["history"]]
    assert np.mean(hist[-6:]) < np.mean(hist[:6])  # 24 steps at lr 2e-2 on 64 examples
    pipe = arjax.load(summary["model_dir"])
    assert pipe.member.name == "flexvar"
    small = np.asarray(pipe.sample([0, 1], top_k=0, top_p=0.0))
    assert small.shape == (2, 16, 16, 3)
    big = np.asarray(pipe.sample([0, 1], top_k=0, top_p=0.0, patch_nums=(1, 2, 3, 6)))  # unseen 24 px
    assert big.shape == (2, 24, 24, 3) and np.isfinite(big).all()
    with pytest.raises(ValueError, match="steps"):
        pipe.sample([0], steps=(1, 1, 1, 1))  # an HMAR option


@pytest.mark.slow  # ~30 s alone; HMAR's loss, training steps and sampler: test_hmar (15 min budget)
def test_hmar_trains_and_its_masked_schedule_changes_at_sampling(tmp_path, tiny_tokenizer_dir):
    from arjax.sample.hmar import fixed_counts, sample_hmar
    from arjax.train.trainer import train
    cfg = load_config(f"{FAMILY}:hmar:tiny", ["steps=4", f"tokenizer_dir={tiny_tokenizer_dir}"])
    summary = train(cfg, tmp_path / "hmar", progress=False)
    assert summary["finished"] and {"loss_next", "loss_mask"} <= set(summary["metrics"])
    pipe = arjax.load(summary["model_dir"])
    pns = pipe.cfg.patch_nums
    schedule = tuple(min(j + 1, p * p) for j, p in enumerate(pns))  # 1, 2, 3, ... masked steps
    from flax import nnx
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
    _, tokens, _, counts = jax.jit(lambda ts, ms: sample_hmar(
        nnx.merge(pipe.tokenizer.graphdef, ts), nnx.merge(pipe.graphdef, ms), jnp.array([0, 1]), keys,
        steps=schedule, top_k=0, top_p=0.0))(pipe.tokenizer.state, pipe.state)
    for c, p, s in zip(counts, pns, schedule):
        plan = np.diff([0, *fixed_counts(p * p, s)])
        np.testing.assert_array_equal(np.asarray(c), np.broadcast_to(plan, (2, s)))
    # the same option through the public API
    b = np.asarray(pipe.sample([0, 1], top_k=0, top_p=0.0, seed=0, steps=schedule))
    assert b.shape == (2, pipe.tokenizer.cfg.image_size, pipe.tokenizer.cfg.image_size, 3) and np.isfinite(b).all()
    with pytest.raises(ValueError, match="steps must give"):
        pipe.sample([0], steps=(1, 1))
    with pytest.raises(ValueError, match="patch_nums"):
        pipe.sample([0], patch_nums=(1, 2))


@pytest.mark.slow  # ~40 s alone: LlamaGen's parity (model, converter, sampler) is in test_llamagen
def test_llamagen_trains_samples_and_edits(tmp_path):
    """The raster member through the generic trainer and pipeline: a one-scale VQ tokenizer, then the GPT
    (loss falls), `arjax.load`, sampling with its own options, teacher-forced logits and editing."""
    from arjax.train.trainer import train
    tok = train(load_config(f"{FAMILY}:vq_tokenizer:tiny", ["steps=4"]),
                tmp_path / "tok", progress=False)
    cfg = load_config(f"{FAMILY}:llamagen:tiny", ["steps=30", "optim.base_lr=2e-2", f"tokenizer_dir={tok['model_dir']}"])
    summary = train(cfg, tmp_path / "gpt", progress=False)
    hist = [h["loss"] for h in summary["history"]]
    assert summary["finished"] and np.mean(hist[-6:]) < np.mean(hist[:6])
    pipe = arjax.load(summary["model_dir"])
    assert pipe.member.name == "llamagen" and pipe.cfg.block_size == 16
    imgs, tokens = pipe.sample([0, 1], top_k=0, top_p=0.0, cfg_interval=3, temperature=0.9, return_tokens=True)
    assert imgs.shape == (2, 16, 16, 3) and tokens.shape == (2, 16)
    logits = pipe.logits(tokens, [0, 1])
    assert logits.shape == (2, 16, pipe.cfg.vocab_size)
    with pytest.raises(ValueError, match="do not apply to llamagen"):
        pipe.sample([0], steps=(1,))
    src = np.asarray(imgs) * 2 - 1
    mask = np.zeros((16, 16), bool)
    mask[8:, :] = True  # the bottom half regenerated: the top half's tokens are forced
    edited, etoks = pipe.edit(src, mask, label=[0, 1], top_k=1, return_tokens=True)
    np.testing.assert_array_equal(np.asarray(etoks)[:, :8], np.asarray(pipe.tokenizer.encode(src))[:, :8])
