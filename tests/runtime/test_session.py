"""Resuming with a changed spec: the changes are shown as `tabula diff` shows them, and compatible ones pass."""

from __future__ import annotations

from runtime_helpers import tiny_spec

from tabula.runtime.rundir import RESOLVED_FILE, RunDir
from tabula.runtime.session import resume_changes
from tabula.schemas.canonical import canonical_yaml


def test_resume_changes_are_listed_as_diff_lines(tmp_path, capsys):
    old = tiny_spec()
    (tmp_path / RESOLVED_FILE).write_text(canonical_yaml(old))
    new = tiny_spec(budget={"tokens": "16k"}, batch_tokens=1024)
    allowed, changes = resume_changes(new, RunDir(tmp_path))
    out = capsys.readouterr().out
    assert allowed and {c["path"] for c in changes} == {"train.budget.tokens", "train.batch_tokens"}
    assert "  ~ train.budget.tokens: 12k -> 16k" in out and "  ~ train.batch_tokens: 512 -> 1k" in out
    assert "compatible with the checkpoint" in out


def test_a_shape_change_is_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / RESOLVED_FILE).write_text(canonical_yaml(tiny_spec()))
    spec = tiny_spec().model_copy(update={"model": tiny_spec().model.model_copy(update={"d_model": 96})})
    allowed, changes = resume_changes(spec, RunDir(tmp_path))
    captured = capsys.readouterr()
    assert not allowed and changes == []
    assert "~ model.d_model: 64 -> 96" in captured.out and "cannot resume" in captured.err
