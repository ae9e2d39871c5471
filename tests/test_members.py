"""The member object: generic code names no member, every registered member is complete (its parts
resolve, its options parse and reject bad values by name, its converter registers a CLI command), and
`arjax.json` is written in one place."""
import ast
import dataclasses
from pathlib import Path

import numpy as np

import pytest

from arjax import members
from arjax.members.base import SamplerOptions

ARJAX = Path(__file__).resolve().parents[1] / "arjax"
GENERIC = [ARJAX / "pipeline.py", ARJAX / "cli.py", ARJAX / "train" / "trainer.py", ARJAX / "plan.py",
           *sorted((ARJAX / "eval").rglob("*.py"))]
NAMES = set(members.MEMBERS) | set(members.TOKENIZERS)
# the modules a member is made of: its model, config, sampler, logits, options, task, converter, registration
MEMBER_MODULES = {path.rpartition(".")[0] for m in map(members.member, members.MEMBERS)
                  for path in (m.module, m.config, m.sampler, m.logits, m.options)} | {
    m.converter for m in map(members.member, members.MEMBERS) if m.converter} | set(members.MEMBERS.values())


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(ARJAX)))
def test_generic_code_names_no_member(path):
    """No string constant in generic code is a member's or tokenizer kind's name, and no generic module
    imports a member's model, sampler, converter or member module directly."""
    tree = ast.parse(path.read_text())
    named = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in NAMES]
    assert not named, f"{path.name} names members: {named}"
    imported = [(n.lineno, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module in MEMBER_MODULES]
    assert not imported, f"{path.name} imports member parts: {imported}"


def test_the_check_can_fail(tmp_path):
    """The AST check above finds a member name where there is one (it is not vacuous)."""
    tree = ast.parse('if meta["family"] == "flexvar": pass')
    assert any(isinstance(n, ast.Constant) and n.value in NAMES for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(members.MEMBERS))
def test_member_parts_resolve(name):
    m = members.member(name)
    assert m.name == name and m.tokenizer in members.TOKENIZERS
    for part in (m.cls, m.config_cls, m.sample, m.teacher_logits, m.task_cls):
        assert callable(part)
    assert issubclass(m.options_cls, SamplerOptions) and dataclasses.is_dataclass(m.options_cls)
    assert m.task_cls.name == name  # the task trains this member
    defaults = m.options_cls.parse({}, None, name)
    hash(defaults)  # a static argument of the compiled sampler
    with pytest.raises(ValueError, match=f"do not apply to {name}"):
        m.options_cls.parse({"no_such_option": 1}, None, name)


def test_options_name_the_bad_value():
    from arjax.nn.models.var import VARConfig
    cfg = VARConfig(depth=2, patch_nums=(1, 2, 3))
    with pytest.raises(ValueError, match="steps must give"):
        members.member("hmar").options_cls.parse({"steps": [1, 5, 1]}, cfg, "hmar")  # 5 > 2 * 2
    assert members.member("hmar").options_cls.parse({"steps": [1, 2, 3]}, cfg, "hmar").steps == (1, 2, 3)
    with pytest.raises(ValueError, match="cfg_style must be one of"):
        members.member("flexvar").options_cls.parse({"cfg_style": "maskgit"}, cfg, "flexvar")
    with pytest.raises(ValueError, match="patch_nums must be increasing"):
        members.member("flexvar").options_cls.parse({"patch_nums": [2, 4]}, cfg, "flexvar")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        members.member("llamagen").options_cls.parse({"temperature": 0}, cfg, "llamagen")


def test_every_converter_is_a_cli_command():
    from arjax.cli import build_parser
    parser = build_parser()
    convertible = [n for n in members.MEMBERS if members.member(n).converter]
    assert set(convertible) >= {"var", "flexvar", "llamagen"}
    sub = next(a for a in parser._subparsers._group_actions[0].choices["convert"]._actions
               if a.dest == "member")
    assert set(sub.choices) == set(convertible)


def test_task_names_resolve_and_unknown_is_named():
    from arjax.train.tasks import FlexTokenizerTask, TokenizerTask
    assert members.task_class("tokenizer") is TokenizerTask
    assert members.task_class("flex_tokenizer") is FlexTokenizerTask
    with pytest.raises(ValueError, match="task='nope'"):
        members.task_class("nope")


def test_meta_has_one_writer():
    """Only arjax.members writes the key naming a member into a model description."""
    writers = [p for p in ARJAX.rglob("*.py") if p.parent.name != "members" and "classifier" not in p.name
               and f'"{members.META_KEY}":' in p.read_text()]
    assert not writers, f"arjax.json descriptions built by hand in {writers}"


def test_var_input_is_for_next_scale_members_only():
    """A one-scale (raster / masked member's) tokenizer has no next scale to feed: a clear error, where a
    multi-scale one gives (B, L - 1, Cvae)."""
    from arjax.config import load_config
    from arjax.pipeline import Tokenizer
    from arjax.nn.init import create
    from arjax.members import tokenizer_kind
    kind = tokenizer_kind("flexvq")
    for stage, n in (("vq_tokenizer", 1), ("flex_tokenizer", 4)):
        cfg = kind.config_cls(**load_config(f"configs/family.py:{stage}:tiny").tokenizer.to_dict())
        tok = Tokenizer(create(kind.cls, cfg, 0), any_schedule=True)
        idx = np.zeros((2, tok.seq_len()), np.int32)
        assert len(tok.schedule()) == n
        if n == 1:
            with pytest.raises(ValueError, match="no next scale"):
                tok.var_input(idx)
        else:
            assert tok.var_input(idx).shape == (2, tok.seq_len() - 1, cfg.z_channels)
