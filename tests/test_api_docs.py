"""docs/api.md cannot rot: every ```python block in it runs (in a temporary working directory
that sees sample_models/), there is one per step, and every name aimetcli.api exports is in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aimetcli import api

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
STEPS = ("fold_bn", "equalize", "bias_correct", "quantsim", "evaluate", "export", "ptq")


def test_an_example_per_step():
    for step in STEPS:
        assert any(f"api.{step}(" in block for block in BLOCKS), f"docs/api.md has no example of api.{step}"


def test_every_exported_name_is_documented():
    text = DOC.read_text()
    missing = [name for name in api.__all__ if f"`{name}`" not in text]
    assert not missing, f"docs/api.md does not mention {missing}"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"example{i + 1}")
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"docs/api.md, example {index + 1}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip(), "an example shows what it did"
