"""Preparing a run: resume checks raise typed errors (the command prints them); the prologue refuses
before it creates anything; the command shows what a prepared run is about to do."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime_helpers import tiny_spec
from tabula.commands.run import change_lines, prepared_lines, report_error
from tabula.runtime.errors import LaunchError, ResumeRefused, RunInputError, TabulaError
from tabula.runtime.rundir import RESOLVED_FILE, RunDir
from tabula.runtime.session import PreparedRun, Ranks, Resume, RunOptions, prepare_run, resume_changes, wants_ranks
from tabula.schemas.canonical import canonical_yaml
from tabula.schemas.errors import SpecErrors


def test_resume_changes_are_listed_as_diff_lines(tmp_path):
    old = tiny_spec()
    (tmp_path / RESOLVED_FILE).write_text(canonical_yaml(old))
    new = tiny_spec(budget={"tokens": "16k"}, batch_tokens=1024)
    changes = resume_changes(new, RunDir(tmp_path))
    assert {c.path for c in changes} == {"train.budget.tokens", "train.batch_tokens"}
    lines = change_lines(tmp_path.name, tuple(changes))
    assert lines[0] == f"The spec differs from the one {tmp_path.name} was trained with:"
    assert "  ~ train.budget.tokens: 12k -> 16k" in lines and "  ~ train.batch_tokens: 512 -> 1k" in lines


def test_a_shape_change_is_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / RESOLVED_FILE).write_text(canonical_yaml(tiny_spec()))
    spec = tiny_spec().model_copy(update={"model": tiny_spec().model.model_copy(update={"d_model": 96})})
    with pytest.raises(ResumeRefused) as refused:
        resume_changes(spec, RunDir(tmp_path))
    error = refused.value
    assert isinstance(error, RunInputError) and isinstance(error, TabulaError)
    assert "~ model.d_model: 64 -> 96" in [c.line() for c in error.changes]
    assert error.reasons and all(reason.startswith("model.") for reason in error.reasons)
    assert str(error).startswith("cannot resume with these changes:\n  model.")
    assert str(error).endswith("Start a new run instead (without --resume).")
    assert report_error(error) == 2
    captured = capsys.readouterr()
    assert "~ model.d_model: 64 -> 96" in captured.out and captured.err.startswith("tabula run: cannot resume")


def test_ranks_without_deepspeed_are_refused_before_anything_is_prepared(tmp_path):
    spec = tiny_spec()
    assert wants_ranks(spec, 2) and not wants_ranks(spec, None)
    with pytest.raises(LaunchError, match="add parallel.backend=deepspeed"):
        prepare_run(spec, RunOptions(spec_path="tiny.yaml", nproc=2, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_run_dir_and_resume_exclude_each_other(tmp_path):
    with pytest.raises(RunInputError, match="exclude each other"):
        prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", resume="auto", run_dir=tmp_path / "run"))


@pytest.mark.slow
def test_prepare_run_opens_the_run_folder_last(tabula_cache, tmp_path):
    """One prologue for every engine: data, plan, checks, then the folder; a refused run leaves none."""
    with pytest.raises(SpecErrors, match="must be a multiple of seq_len"):  # the plan's refusal, after the data
        prepare_run(tiny_spec(batch_tokens=544), RunOptions(spec_path="tiny.yaml", run_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    options = RunOptions(spec_path="tiny.yaml", run_dir=tmp_path / "run", command=("tabula", "run", "tiny.yaml"))
    ready = prepare_run(tiny_spec(), options)
    assert ready.run.path == tmp_path / "run" and ready.ranks is None and ready.resume is None
    assert ready.plan.total_steps == 24 and ready.plan.vocab_size == ready.data.vocab_size
    manifest = ready.run.read_manifest()
    assert manifest["command"] == ["tabula", "run", "tiny.yaml"] and manifest["spec_hash"] == ready.spec_hash
    with pytest.raises(RunInputError, match="already exists and is not empty"):
        prepare_run(tiny_spec(), options)


def test_a_prepared_run_shows_its_changes_notes_and_ranks(tmp_path):
    run = RunDir(tmp_path / "tiny-1")
    changes = tuple(resume_changes_of(tmp_path))
    move = SimpleNamespace(text="2 ranks ZeRO-2 -> 2 ranks ZeRO-1")
    ready = PreparedRun(spec=tiny_spec(), options=RunOptions(spec_path="tiny.yaml"), plan=SimpleNamespace(notes=("a note",), precision="fp32"),
                        data=None, spec_hash="h", run=run, device_type="cpu", ranks=Ranks(2),
                        resume=Resume(run, run.path / "checkpoints" / "step-000004", changes, move))
    assert prepared_lines(ready) == [
        "The spec differs from the one tiny-1 was trained with:",
        "  ~ train.budget.tokens: 12k -> 16k",
        "These changes are compatible with the checkpoint: applying them.",
        "resuming 2 ranks ZeRO-2 -> 2 ranks ZeRO-1 through a universal checkpoint: weights and optimizer state kept",
        "note: a note",
        f"run folder: {run.path}",
        "DeepSpeed ZeRO-0, 2 ranks on this machine (cpu, fp32)",
    ]


def resume_changes_of(folder: Path):
    (folder / RESOLVED_FILE).write_text(canonical_yaml(tiny_spec()))
    return resume_changes(tiny_spec(budget={"tokens": "16k"}), RunDir(folder))
