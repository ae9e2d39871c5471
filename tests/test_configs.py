"""The shipped configs: ImageNet recipes carry the official numbers and build the published model sizes."""
from pathlib import Path

import jax
import pytest

from arjax.config import load_config
from arjax.nn.init import abstract_params
from arjax.nn.models.var import VAR, VARConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("depth,batch,epochs,lr,params_m", [
    (16, 768, 200, 1e-4, 310), (20, 768, 250, 1e-4, 600), (24, 768, 350, 8e-5, 1000), (30, 1024, 350, 8e-5, 2000)])
def test_imagenet_var_recipes(depth, batch, epochs, lr, params_m):
    c = load_config(f"{CONFIGS / 'imagenet.py'}:d{depth}")
    assert (c.batch_size, c.optim.base_lr, c.model.depth) == (batch, lr, depth)
    assert c.steps == round(epochs * 1_281_167 / batch)
    assert c.optim.warmup_steps == round(epochs / 50 * 1_281_167 / batch)  # warmup: ep/50 epochs
    tok = load_config(f"{CONFIGS / 'imagenet.py'}:tokenizer").tokenizer
    mcfg = VARConfig(**c.model.to_dict(), vocab_size=tok.vocab_size, cvae=tok.z_channels, patch_nums=tok.patch_nums)
    n = sum(x.size for x in jax.tree.leaves(abstract_params(VAR, mcfg))) / 1e6
    assert n == pytest.approx(params_m, rel=0.06)  # the paper's rounded sizes: 310M, 600M, 1.0B, 2.0B


def test_imagenet_tokenizer_recipe_is_the_released_layout():
    c = load_config(f"{CONFIGS / 'imagenet.py'}:tokenizer")
    t = c.tokenizer
    assert (t.ch, t.vocab_size, t.z_channels, t.patch_nums[-1], c.disc.weight > 0) == (160, 4096, 32, 16, True)
    with pytest.raises(ValueError, match="depth 12"):
        load_config(f"{CONFIGS / 'imagenet.py'}:d12")


TRAINING_CONFIGS = [f"family.py:{s}" for s in ("tokenizer", "flex_tokenizer", "vq_tokenizer", "var", "hmar",
                                                 "flexvar", "llamagen", "maskgit")] + \
                   ["quickstart.py:tokenizer", "quickstart.py:var", "imagenet.py:tokenizer", "imagenet.py:d16"]


@pytest.mark.parametrize("spec", TRAINING_CONFIGS)
def test_every_training_config_has_a_tiny_size(spec):
    """`:tiny` (what the tests train with): a few steps of a small batch, and the network it builds (the
    tokenizer, or the generator on the tiny tokenizer) has under 1M parameters, from any size."""
    from arjax import members
    c = load_config(f"{CONFIGS / spec}:tiny")
    assert c.steps <= 8 and c.batch_size == 4 and c.checkpoint.every <= 4
    kind = members.tokenizer_kind_of_task(c.task)
    if kind is not None:
        module, cfg = kind.cls, kind.config_cls(**c.tokenizer.to_dict())
    else:
        member = members.member(c.task)
        tok_cfg = members.tokenizer_kind(member.tokenizer).config_cls
        stage = {"msvq": "tokenizer", "flexvq": "vq_tokenizer" if c.task in ("llamagen", "maskgit") else "flex_tokenizer"}
        tok = tok_cfg(**load_config(f"{CONFIGS / 'family.py'}:{stage[member.tokenizer]}:tiny").tokenizer.to_dict())
        from arjax.train.generator_tasks import GeneratorTask
        task_cls = members.task_class(c.task)
        fields = task_cls.tokenizer_fields(tok) if issubclass(task_cls, GeneratorTask) else {}
        module, cfg = member.cls, member.config_cls(**{**c.model.to_dict(), **fields})
    n = sum(x.size for x in jax.tree.leaves(abstract_params(module, cfg)))
    assert 1000 < n < 1_000_000, (spec, n)
