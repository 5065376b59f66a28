"""`tabula run` against damaged, busy and impossible run folders, as an unkind user (or a crash) leaves them.

Whatever is wrong, the command says so in one line and exits 2 (nothing ran) or 3 (the run failed), never
with a traceback; a refused resume leaves the folder as it found it, and the folder resumes once the damage
is undone. Most cases call the command in this process (`tabula.cli.main`, fast); the ones that need real
processes (the lock, SIGKILL, a full disk, the exit status itself) run `tabula` as a subprocess."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

from tabula.cli import main
from tabula.runtime.events import read_events
from tabula.runtime.runlock import lock_owner

TABULA = Path(sys.executable).with_name("tabula")

pytestmark = pytest.mark.slow

TINY = tiny_spec_yaml()  # 48 steps of 512 tokens, a checkpoint every 8 steps
CRASH_AT_BUILD = """\
import os
if os.environ.get("TABULA_TEST_CRASH_AT_BUILD"):
    import tabula.runtime.build as build

    def crash(*args, **kwargs):
        raise RuntimeError("planted: the engine cannot be built")

    build.build_local_engine = crash
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the tiny spec, its token cache, and `runs/base`: a run stopped with a checkpoint at step 2."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "tiny.yaml").write_text(TINY)
    result = tabula(folder, "run", "tiny.yaml", "--headless", "--max-steps", "2", "--run-dir", "runs/base")
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.fixture
def here(work, monkeypatch, capsys):
    """`tabula ARGS` in this process, in `work`: (exit code, stdout, stderr)."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("TABULA_CACHE_DIR", str(work / "cache"))

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def tabula(work: Path, *args: str, env: dict | None = None, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([str(TABULA), *args], cwd=work, env=environment(work, env), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit if max_file_bytes else None)


def environment(work: Path, extra: dict | None = None) -> dict:
    return {**os.environ, "TABULA_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1", **(extra or {})}


def copy_of_base(work: Path, name: str) -> Path:
    target = work / "runs" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "runs" / "base", target)
    return target


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """The bytes of the files a refused session must leave alone."""
    return {name: (run_dir / name).read_bytes() for name in ("manifest.json", "events.jsonl", "resolved.yaml")
            if (run_dir / name).is_file()}


def assert_refused(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert err.startswith("tabula run: ") and err.count("\n") == 1, err  # one line
    for word in words:
        assert word in err, err


def assert_resumes(call, run_dir: Path) -> None:
    """The folder resumes (one step, a checkpoint) and its events read back whole, the new session's last."""
    code, out, err = call("run", "tiny.yaml", "--headless", "--max-steps", "1", "--resume", str(run_dir))
    assert code == 0, out + err
    assert "Traceback" not in out + err
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "stopped" and events[-1]["step"] == 3
    assert [e["kind"] for e in events].count("start") >= 1 and lock_owner(run_dir) is None


# ---------------------------------------------------------------- damaged files of a run folder


def _garbage_yaml(path: Path) -> None:
    path.write_text("model: [d_model: 64\n")


def _not_a_spec(path: Path) -> None:
    path.write_text("a: 1\n")


def _binary(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path) -> None:
    path.unlink()


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


DAMAGE = {"garbage": _garbage_yaml, "not-a-spec": _not_a_spec, "binary": _binary, "empty": _empty, "missing": _missing,
          "folder": _folder}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_resolved_spec_refuses_the_resume_and_leaves_the_folder(work, here, damage):
    run_dir = copy_of_base(work, f"resolved-{damage}")
    DAMAGE[damage](run_dir / "resolved.yaml")
    before = snapshot(run_dir)
    code, out, err = here("run", "tiny.yaml", "--headless", "--resume", str(run_dir))
    assert_refused(code, out, err, f"{run_dir}/resolved.yaml", "the spec the run was trained with")
    assert snapshot(run_dir) == before and lock_owner(run_dir) is None
    if damage == "folder":  # resumable again once the file is back (one case: the others refuse alike)
        _restore(run_dir / "resolved.yaml", work / "runs" / "base" / "resolved.yaml")
        assert_resumes(here, run_dir)


@pytest.mark.parametrize("damage, says", [
    ("garbage", "is damaged: not JSON"), ("binary", "is damaged: not UTF-8 text"), ("empty", "is empty"),
    ("missing", "not a run folder (no manifest.json)"), ("folder", "is a folder, not a file"),
    ("a-list", "is damaged: a JSON list, not an object"), ("resumes", "its `resumes` is a str, not a list"),
])
def test_a_damaged_manifest_refuses_the_resume_and_leaves_the_folder(work, here, damage, says):
    run_dir = copy_of_base(work, f"manifest-{damage}")
    manifest = run_dir / "manifest.json"
    if damage == "a-list":
        manifest.write_text("[1, 2, 3]")
    elif damage == "resumes":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "resumes": "none"}))
    else:
        {**DAMAGE, "garbage": lambda p: p.write_text('{"spec_name": "tiny",')}[damage](manifest)
    before = snapshot(run_dir)
    code, out, err = here("run", "tiny.yaml", "--headless", "--resume", str(run_dir))
    assert_refused(code, out, err, says)
    assert snapshot(run_dir) == before and lock_owner(run_dir) is None
    if damage == "garbage":  # resumable again once the file is back (one case: the others refuse alike)
        _restore(manifest, work / "runs" / "base" / "manifest.json")
        assert_resumes(here, run_dir)


def _restore(path: Path, original: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    shutil.copy(original, path)


def test_resume_auto_passes_over_a_run_whose_manifest_is_unreadable(work, here, tmp_path, monkeypatch):
    auto = tmp_path / "auto"
    (auto / "runs").mkdir(parents=True)
    (auto / "tiny.yaml").write_text(TINY)
    shutil.copytree(work / "runs" / "base", auto / "runs" / "tiny-good")
    shutil.copytree(work / "runs" / "base", auto / "runs" / "tiny-newer")
    (auto / "runs" / "tiny-newer" / "manifest.json").write_text("{")  # the newest run, but nobody can tell whose
    (auto / "runs" / ".tmp-tiny-20261128-101500-4242").mkdir()  # a folder another run is creating
    monkeypatch.chdir(auto)
    code, out, err = here("run", "tiny.yaml", "--headless", "--max-steps", "1", "--resume", "auto")
    assert code == 0, out + err
    assert "warning: --resume auto passed over runs/tiny-newer: its manifest.json is damaged: not JSON" in err
    assert "run folder: runs/tiny-good" in out and "Traceback" not in out + err


@pytest.mark.parametrize("damage", ["torn", "binary", "missing", "folder"])
def test_a_damaged_event_log(work, here, damage):
    """A torn or garbled event log is appended to on a fresh line (readers skip what is not an event); a
    folder where it should be refuses the resume, naming it."""
    run_dir = copy_of_base(work, f"events-{damage}")
    events = run_dir / "events.jsonl"
    if damage == "torn":  # killed mid-write: half an event, no newline
        events.write_text(events.read_text() + '{"kind":"train","time":1.0,"step":3,"tokens":1536,"lo')
    elif damage == "binary":
        events.write_bytes(events.read_bytes() + bytes(range(256)) * 8)
    elif damage == "missing":
        events.unlink()
    else:
        _folder(events)
        code, out, err = here("run", "tiny.yaml", "--headless", "--resume", str(run_dir))
        assert_refused(code, out, err, f"{events} is not a file")
        shutil.rmtree(events)
    assert_resumes(here, run_dir)
    kinds = [e["kind"] for e in read_events(events)]
    assert kinds[-2:] == ["checkpoint", "end"] and "start" in kinds
    if damage == "torn":
        lines = events.read_text().splitlines()
        torn = next(i for i, line in enumerate(lines) if line.endswith('"lo'))
        assert json.loads(lines[torn + 1])["kind"] == "start"  # the new session's first event, whole


def test_a_folder_where_the_lock_file_should_be_refuses_the_resume(work, here):
    run_dir = copy_of_base(work, "lock-folder")
    (run_dir / "lock").unlink()  # the record the base run's session left
    (run_dir / "lock").mkdir()
    before = snapshot(run_dir)
    code, out, err = here("run", "tiny.yaml", "--headless", "--resume", str(run_dir))
    assert_refused(code, out, err, f"cannot write into the run folder {run_dir}: lock: Is a directory")
    assert snapshot(run_dir) == before
    (run_dir / "lock").rmdir()
    assert_resumes(here, run_dir)


# ---------------------------------------------------------------- a new run's folder


@pytest.mark.parametrize("flags, says", [
    (["--run-dir", "/proc/tabula/run"], "cannot create the run folder /proc/tabula/run: /proc: "),
    (["--run-dir", "a-file/run"], "cannot create the run folder a-file/run: a-file is a file, not a folder"),
    (["--run-dir", "a-file"], "the run folder a-file exists and is not a folder"),
    (["--run-dir", "a-link"], "the run folder a-link exists and is a symbolic link"),
    (["--run-dir", "runs/base"], "runs/base already exists and is not empty; use --resume runs/base"),
    # (a name that long is refused by the spec itself: at most 100 characters; a folder name can still be)
    (["track.runs_dir=" + "d" * 300], "bytes, longer than the 255 this file system allows (shorten the spec's name"),
    (["track.runs_dir=a-file"], "cannot create the run folder a-file/tiny-"),
    (["track.runs_dir=a-file/runs"], "a-file is a file, not a folder"),
])
def test_a_run_folder_that_cannot_be_created_is_refused_before_anything_runs(work, here, flags, says):
    (work / "a-file").write_text("not a folder")
    if not os.path.lexists(work / "a-link"):
        (work / "a-link").symlink_to(work / "nowhere")
    before = sorted(p.name for p in work.iterdir()), sorted(p.name for p in (work / "runs").iterdir())
    code, out, err = here("run", "tiny.yaml", *flags, "--headless")
    assert_refused(code, out, err, says)
    assert (sorted(p.name for p in work.iterdir()), sorted(p.name for p in (work / "runs").iterdir())) == before


def test_a_full_disk_while_creating_the_folder_leaves_nothing(work):
    result = tabula(work, "run", "tiny.yaml", "--headless", "--run-dir", "runs/full-new", max_file_bytes=4096)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tabula run: cannot create the run folder runs/full-new: File too large" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not [p for p in (work / "runs").iterdir() if "full-new" in p.name]  # no folder, no temporary one


def test_a_full_disk_when_the_resume_is_recorded_keeps_the_manifest(work):
    run_dir = copy_of_base(work, "full-manifest")
    before = snapshot(run_dir)
    result = tabula(work, "run", "tiny.yaml", "--headless", "--resume", str(run_dir), max_file_bytes=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"tabula run: cannot record this resume in {run_dir}/manifest.json: File too large" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(run_dir) == before and not list(run_dir.glob(".*.tmp"))
    resumed = tabula(work, "run", "tiny.yaml", "--headless", "--max-steps", "1", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


# ---------------------------------------------------------------- two sessions, one folder


def test_a_second_session_is_refused_and_a_killed_owner_leaves_no_lock(work):
    run_dir = copy_of_base(work, "busy")
    longer = "train.budget.tokens=2M"  # the owner trains long enough to be met (a compatible change)
    owner = subprocess.Popen([str(TABULA), "run", "tiny.yaml", longer, "--headless", "--resume", str(run_dir)], cwd=work,
                             env=environment(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(e["kind"] == "train" for e in read_events(run_dir / "events.jsonl") if e["step"] > 2):
            assert owner.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = tabula(work, "run", "tiny.yaml", longer, "--headless", "--resume", str(run_dir))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by another session (pid {owner.pid} on host {socket.gethostname()}, since" in second.stderr
        assert "Traceback" not in second.stdout + second.stderr
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    starts = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "start"]
    assert len(starts) == 2  # the base run's and the owner's: the refused ones wrote nothing
    resumed = tabula(work, "run", "tiny.yaml", longer, "--headless", "--max-steps", "1", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_events(run_dir / "events.jsonl")[-1]["reason"] == "stopped"


# ---------------------------------------------------------------- a run that fails, and its exit code


def test_a_crash_before_the_first_step_exits_3_with_an_end_event_and_the_traceback_logged(work, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(CRASH_AT_BUILD)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "TABULA_TEST_CRASH_AT_BUILD": "1"}
    result = tabula(work, "run", "tiny.yaml", "--headless", "--run-dir", "runs/crashed", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output
    log = work / "runs" / "crashed" / "error.log"
    assert "RuntimeError: planted: the engine cannot be built (traceback in runs/crashed/error.log)" in output
    assert "Traceback (most recent call last)" in log.read_text()
    end = read_events(work / "runs" / "crashed" / "events.jsonl")[-1]
    assert end["kind"] == "end" and end["reason"] == "failed" and "planted: the engine cannot be built" in end["error"]


def test_out_of_memory_while_building_the_model_is_reported_with_the_plan(work, here, monkeypatch):
    from tabula.compiler.model import Transformer

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 262144 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Transformer, "materialize", no_memory)
    code, out, err = here("run", "tiny.yaml", "--headless", "--run-dir", "runs/oom")
    assert code == 3, out + err
    assert "Traceback" not in out + err
    assert "out of memory while allocating the model on cpu: the plan needs " in out
    end = read_events(work / "runs" / "oom" / "events.jsonl")[-1]
    assert end["reason"] == "failed" and end["error"].startswith("out of memory while allocating the model on cpu")


def test_a_model_larger_than_memory_is_refused_with_the_plans_numbers(work, here):
    code, out, err = here("run", "tiny.yaml", "model.d_model=8192", "model.n_layers=64", "--headless", "--run-dir", "runs/huge")
    assert_refused(code, out, err, "the plan needs ", " per rank (", "optimizer state", "and this machine's memory has ",
                   "TABULA_NO_MEMORY_CHECK=1 starts anyway")
    assert not (work / "runs" / "huge").exists()


def test_the_continue_hint_is_a_command_that_works(work):
    first = tabula(work, "run", "tiny.yaml", "train.budget.tokens=5k", "model.block.norm.eps=1e-6", "--headless",
                   "--max-steps", "2", "--run-dir", "runs/hint")
    assert first.returncode == 0, first.stdout + first.stderr
    hint = first.stdout.split("continue with: ", 1)[1].strip().splitlines()[0]
    assert hint == "tabula run tiny.yaml train.budget.tokens=5k model.block.norm.eps=1e-6 --resume runs/hint"
    words = shlex.split(hint)
    resumed = subprocess.run([str(TABULA), *words[1:]], cwd=work, env=environment(work), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finished at step 10" in resumed.stdout and "differs" not in resumed.stdout


def test_an_unexpected_error_of_a_started_run_is_one_line_and_exit_3(work, here, monkeypatch):
    """A bug after the folder exists (here: printing the prepared run) fails the run as any failure does: exit 3,
    as under the dashboard, one line naming RUN_DIR/error.log, the end event written."""
    import tabula.commands.run as run_command

    def broken(ready):
        raise KeyError("planted")

    monkeypatch.setattr(run_command, "prepared_lines", broken)
    code, out, err = here("run", "tiny.yaml", "--headless", "--run-dir", "runs/bug")
    assert code == 3, out + err
    assert "Traceback" not in out + err
    assert err == "tabula run: unexpected error: KeyError: 'planted'; the traceback is in runs/bug/error.log\n"
    assert "Traceback (most recent call last)" in (work / "runs" / "bug" / "error.log").read_text()
    end = read_events(work / "runs" / "bug" / "events.jsonl")[-1]
    assert end["reason"] == "failed" and end["error"] == "KeyError: 'planted' (traceback in runs/bug/error.log)"
    assert lock_owner(work / "runs" / "bug") is None
