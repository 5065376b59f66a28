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
    with pytest.raises(LaunchError, match=r"add parallel.backend=fsdp \(FSDP2 through torchrun\) or parallel.backend=deepspeed"):
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


# ---------------------------------------------------------------- the run folder's lock and the session's end


@pytest.fixture(scope="module")
def prepared_base(tmp_path_factory):
    """A tiny run stopped at step 2 with a checkpoint, and its token cache."""
    import os

    from tabula.runtime.session import run_prepared

    folder = tmp_path_factory.mktemp("session")
    old = os.environ.get("TABULA_CACHE_DIR")
    os.environ["TABULA_CACHE_DIR"] = str(folder / "cache")
    try:
        ready = prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", run_dir=folder / "base", max_steps=2))
        assert ready.lock is not None and ready.lock.held
        outcome = run_prepared(ready)
        assert outcome.reason == "stopped" and not ready.lock.held  # released once the run ended
    finally:
        os.environ.pop("TABULA_CACHE_DIR") if old is None else os.environ.__setitem__("TABULA_CACHE_DIR", old)
    return folder


@pytest.fixture
def copy(prepared_base, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("TABULA_CACHE_DIR", str(prepared_base / "cache"))
    shutil.copytree(prepared_base / "base", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_a_resume_holds_the_folder_and_a_refused_one_lets_it_go(copy):
    from tabula.runtime.errors import RunLocked
    from tabula.runtime.runlock import lock_owner

    ready = prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", resume=str(copy)))
    try:
        assert lock_owner(copy)["pid"] == __import__("os").getpid()
        with pytest.raises(RunLocked, match=f"{copy} is in use by another session"):
            prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", resume=str(copy)))
    finally:
        ready.release()
    assert lock_owner(copy) is None
    shape = tiny_spec().model_copy(update={"model": tiny_spec().model.model_copy(update={"d_model": 96})})
    with pytest.raises(ResumeRefused):
        prepare_run(shape, RunOptions(spec_path="tiny.yaml", resume=str(copy)))
    assert lock_owner(copy) is None  # the refusal released it


@pytest.mark.slow
def test_a_failure_building_the_engine_ends_the_session_with_its_error(copy, monkeypatch):
    import tabula.runtime.build as build
    from tabula.runtime.events import read_events
    from tabula.runtime.session import run_prepared

    def broken(*args, **kwargs):
        raise ValueError("planted: no engine today")

    monkeypatch.setattr(build, "build_local_engine", broken)
    ready = prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", resume=str(copy)))
    outcome = run_prepared(ready)
    assert outcome.reason == "failed" and outcome.step == 2 and outcome.checkpoint.name == "step-000002"
    assert outcome.error == f"ValueError: planted: no engine today (traceback in {copy / 'error.log'})"
    end = read_events(copy / "events.jsonl")[-1]
    assert (end["kind"], end["reason"], end["step"], end["error"]) == ("end", "failed", 2, outcome.error)
    assert "Traceback (most recent call last)" in (copy / "error.log").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_local_engine", interrupted)
    outcome = run_prepared(prepare_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", resume=str(copy))))
    assert (outcome.reason, outcome.signal) == ("stopped", "SIGINT")
    assert read_events(copy / "events.jsonl")[-1]["reason"] == "stopped"


def test_the_memory_check_refuses_with_the_plans_numbers_unless_told_not_to(monkeypatch):
    import torch

    import tabula.runtime.memory as memory
    from tabula.compiler import make_plan
    from tabula.runtime.errors import NotEnoughMemory

    spec = tiny_spec()
    plan = make_plan(spec, vocab_size=512)
    on_device, _ = memory.memory_needed(spec, plan, device_type="cpu")
    needed = sum(on_device.values())
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory, "host_free_memory", lambda: needed * 2)
    memory.check_memory(spec, plan, torch.device("cpu"))  # fits
    with pytest.raises(NotEnoughMemory) as refused:
        memory.check_memory(spec, plan, torch.device("cpu"), ranks_here=2, spec_path="tiny.yaml")  # two ranks do not
    message = str(refused.value)
    assert message.startswith("the plan needs ") and " per rank (activations " in message and ", optimizer state " in message
    assert "for the 2 ranks on this machine, and this machine's memory has " in message
    assert "`tabula plan tiny.yaml` shows where it goes" in message and refused.value.needed == 2 * needed
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_memory(spec, plan, torch.device("cpu"), ranks_here=2)
    monkeypatch.setenv(memory.SKIP_ENV, "0")
    monkeypatch.setattr(memory, "host_free_memory", lambda: None)  # cannot tell: no refusal on a guess
    memory.check_memory(spec, plan, torch.device("cpu"), ranks_here=2)


def test_the_launcher_writes_this_sessions_end_after_an_earlier_sessions_end(tmp_path):
    """Ranks of a resume that fail before their first event: the end found must be this session's."""
    import json

    from tabula.runtime.launch import _finish

    earlier = [{"kind": "start", "time": 1.0, "step": 0, "tokens": 0},
               {"kind": "end", "time": 2.0, "step": 8, "tokens": 4096, "reason": "stopped", "error": None}]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in earlier))
    outcome = _finish(tmp_path, [1], ["boom"], type("Out", (), {"write": lambda self, text: None})(), since=path.stat().st_size)
    end = json.loads(path.read_text().splitlines()[-1])
    assert outcome.reason == "failed" and (end["reason"], end["step"]) == ("failed", 8)
    assert end["error"] == "a rank exited with status 1 without reporting an error"


def test_the_dashboard_refuses_a_busy_run_before_it_opens(tmp_path, monkeypatch):
    from tabula.commands.run import child_command
    from tabula.runtime.errors import RunLocked
    from tabula.runtime.runlock import RunLock

    import tabula.runtime.session as session

    run = RunDir(tmp_path / "busy")
    run.path.mkdir()
    monkeypatch.setattr(session, "find_resume_target", lambda spec, options, notes=None: (run, None) if options.resume else None)
    with RunLock.acquire(run.path):
        with pytest.raises(RunLocked, match="is in use by another session"):
            child_command(RunOptions(spec_path="tiny.yaml", resume=str(run.path)), tiny_spec())
    command, where = child_command(RunOptions(spec_path="tiny.yaml", resume=str(run.path)), tiny_spec())
    assert where == run.path and command[-2:] == ["--resume", str(run.path)]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunInputError, match="a-file is a file, not a folder"):
        child_command(RunOptions(spec_path="tiny.yaml", run_dir=tmp_path / "a-file" / "run"), tiny_spec())


def test_the_continue_hint_keeps_overrides_nproc_and_cache(tmp_path):
    from tabula.commands.run import resume_command

    options = RunOptions(spec_path="my spec.yaml", overrides=("train.budget.tokens=5k", "name=it's"), nproc=2,
                         cache_dir=Path("/c"))
    assert resume_command(options, Path("runs/r 1")) == (
        "tabula run 'my spec.yaml' train.budget.tokens=5k 'name=it'\"'\"'s' --resume 'runs/r 1' --nproc 2 --cache-dir /c")


def test_the_memory_check_on_a_gpu_compares_the_devices_free_memory(monkeypatch):
    """(Arithmetic only: the device's free memory is given.) The launcher of GPU ranks checks no device:
    a CUDA context there would take a rank's memory; each rank checks its own."""
    import torch

    import tabula.runtime.memory as memory
    from tabula.compiler import make_plan
    from tabula.runtime.errors import NotEnoughMemory

    spec = tiny_spec()
    plan = make_plan(spec, vocab_size=512, device_type="cuda")
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory, "free_memory", lambda device: 1024)
    with pytest.raises(NotEnoughMemory, match=r"and cuda device cuda:0 has 1.0 KiB free"):
        memory.check_memory(spec, plan, torch.device("cuda", 0))
    memory.check_memory(spec, plan, torch.device("cuda", 0), device_side=False)  # nothing offloaded to the host


def test_a_default_run_name_taken_in_the_same_second_moves_to_the_next(tmp_path, monkeypatch):
    import tabula.runtime.rundir as rundir
    from tabula.runtime.session import open_run

    taken = tmp_path / "tiny-20261128-101500"
    taken.mkdir()
    (taken / "manifest.json").write_text("{}")  # another run, started in the same second, got there first
    names = iter([taken, tmp_path / "tiny-20261128-101500-2"])
    monkeypatch.setattr(rundir, "new_run_path", lambda runs_dir, name: next(names))
    data = SimpleNamespace(fingerprint="f", tokenizer_hash="h", vocab_size=512, tokenizer_json="{}")
    run, lock = open_run(tiny_spec(), RunOptions(spec_path="tiny.yaml"), data=data, spec_hash="h", resume=None)
    lock.release()
    assert run.path.name == "tiny-20261128-101500-2" and sorted(p.name for p in taken.iterdir()) == ["manifest.json"]
    with pytest.raises(RunInputError, match="already exists and is not empty"):  # a name the user gave is theirs
        open_run(tiny_spec(), RunOptions(spec_path="tiny.yaml", run_dir=taken), data=data, spec_hash="h", resume=None)
