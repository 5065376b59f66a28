"""The run folder as the one thing a session owns: created whole or not at all (a path that cannot take it is
refused with the OS's reason), locked by one session at a time with an OS lock that dies with its process,
an event log a crash cannot glue two sessions' lines in, and damaged files named rather than crashed on."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tabula.runtime.errors import RunFolderDamaged, RunInputError, RunLocked
from tabula.runtime.events import EventWriter, read_events
from tabula.runtime.rundir import RunDir, check_new_run_path, create_run, create_run_dir, find_resume, read_manifest_file
from tabula.runtime.runlock import RunLock, lock_owner
from tabula.schemas.rundir_protocol import LOCK_FILE, end_event

FILES = dict(spec_text="name: x\n", resolved_yaml="name: x\n", manifest={"spec_name": "x", "resumes": []}, tokenizer_json="{}")

HOLDER = textwrap.dedent("""\
    import sys, time
    from tabula.runtime.runlock import RunLock
    lock = RunLock.acquire(sys.argv[1], command=["holder"])
    print("locked", flush=True)
    time.sleep(600)
""")


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock (as a training session would) until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


# ---------------------------------------------------------------- the lock


def test_a_second_process_is_refused_with_the_owners_pid_and_host(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLocked) as refused:
            RunLock.acquire(tmp_path)
        assert refused.value.owner["pid"] == holder.pid and refused.value.owner["host"] == socket.gethostname()
        assert f"is in use by another session (pid {holder.pid} on host {socket.gethostname()}, since " in str(refused.value)
        assert isinstance(refused.value, RunInputError)
        assert lock_owner(tmp_path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_of_the_owner_leaves_no_stale_lock(tmp_path):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists() and lock_owner(tmp_path) is None  # the record stays, the lock is gone
    with RunLock.acquire(tmp_path, command=["tabula", "run"]) as lock:
        assert lock.held and lock_owner(tmp_path)["pid"] == os.getpid()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["command"] == ["tabula", "run"]
    assert lock_owner(tmp_path) is None


def test_a_lock_file_that_cannot_be_opened_is_a_run_input_error(tmp_path):
    (tmp_path / LOCK_FILE).mkdir()  # something else where the lock should be
    with pytest.raises(RunInputError, match=f"cannot write into the run folder {tmp_path}: lock: Is a directory"):
        RunLock.acquire(tmp_path)


def test_a_lock_that_links_elsewhere_is_never_written_through(tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).symlink_to(precious)
    with pytest.raises(RunInputError, match="lock: it is a symbolic link"):
        RunLock.acquire(tmp_path / "run")
    assert precious.read_text() == "keep me" and lock_owner(tmp_path / "run") is None
    (tmp_path / "run" / "error.log").symlink_to(precious)
    assert RunDir(tmp_path / "run").append_error_log("Traceback ...") is None
    assert precious.read_text() == "keep me"


def test_pipes_in_a_run_folder_are_refused_not_waited_on(tmp_path):
    """A reader of a named pipe waits for a writer that never comes: a hostile folder must not hang a resume."""
    from tabula.runtime.session import resume_changes

    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(RunFolderDamaged, match="manifest.json is not a regular file"):
        RunDir(tmp_path).read_manifest()
    os.mkfifo(tmp_path / "resolved.yaml")
    with pytest.raises(RunFolderDamaged, match="resolved.yaml is not a file"):
        resume_changes(None, RunDir(tmp_path))
    os.mkfifo(tmp_path / LOCK_FILE)
    with pytest.raises(RunInputError, match="lock is not a file"):
        RunLock.acquire(tmp_path)
    assert lock_owner(tmp_path) is None


def test_a_child_given_the_lock_keeps_the_run_locked(tmp_path):
    """DeepSpeed's launcher gets the lock's descriptor: the run stays locked while it (and so its ranks) lives,
    also when tabula's own process is gone."""
    lock = RunLock.acquire(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE, text=True,
                             pass_fds=(lock.fd,))
    lock.release()
    try:
        assert lock_owner(tmp_path) is not None
        with pytest.raises(RunLocked):
            RunLock.acquire(tmp_path)
    finally:
        child.communicate("\n")
    assert lock_owner(tmp_path) is None


def test_the_launcher_is_started_with_the_lock(tmp_path):
    import io

    from tabula.runtime.launch import _supervise

    with RunLock.acquire(tmp_path) as lock:
        probe = [sys.executable, "-c", f"import os; os.fstat({lock.fd}); print('the lock is open here')"]
        out = io.StringIO()
        codes, _, _ = _supervise(probe, dict(os.environ), tmp_path, out, keep_fds=(lock.fd,))
        assert codes == [] and "the lock is open here" in out.getvalue()
        codes, _, _ = _supervise(probe, dict(os.environ), tmp_path, io.StringIO())
        assert codes == [1]  # not inherited unless handed over


# ---------------------------------------------------------------- creating a run folder


def test_a_new_run_folder_is_created_whole_and_locked(tmp_path):
    run, lock = create_run(tmp_path / "runs" / "r", **FILES)
    try:
        assert sorted(p.name for p in run.path.iterdir()) == [
            "checkpoints", "control", "events.jsonl", "lock", "manifest.json", "resolved.yaml", "spec.yaml", "tokenizer.json"]
        assert lock.run_dir == run.path and lock_owner(run.path)["pid"] == os.getpid()
        assert [p.name for p in run.path.parent.iterdir()] == ["r"]  # no temporary folder beside it
    finally:
        lock.release()


def test_a_refused_write_leaves_no_half_folder(tmp_path, monkeypatch):
    import tabula.runtime.rundir as rundir

    real = rundir._write_synced

    def full_disk(path, text):
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(rundir, "_write_synced", full_disk)
    with pytest.raises(RunInputError, match=r"cannot create the run folder .*/r: No space left on device"):
        create_run(tmp_path / "r", **FILES)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_abandoned_mid_creation_is_removed_and_never_resumed(tmp_path):
    """A run killed while creating its folder leaves `.tmp-<name>-<pid>`: not a run to --resume auto, and
    removed by the next creation beside it once nobody holds its lock."""
    abandoned = tmp_path / ".tmp-x-20261128-101500-99999"
    abandoned.mkdir()
    holder = hold_lock(abandoned)
    (abandoned / "manifest.json").write_text(json.dumps({"spec_name": "x", "created": 1e12}))
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    spec = type("S", (), {"name": "x", "track": type("T", (), {"runs_dir": str(tmp_path)})()})()
    with pytest.raises(FileNotFoundError, match="no run of 'x' with a complete checkpoint"):
        find_resume("auto", spec)
    unrelated = tmp_path / ".tmp-mine"
    unrelated.mkdir()  # no lock record of a tabula run: not ours to delete
    create_run_dir(tmp_path / "x-1", **FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-mine", "x-1"]


@pytest.mark.parametrize("where, reason", [
    ("/proc/tabula-test/run", "cannot create the run folder /proc/tabula-test/run: /proc: "),
    ("a-file/run", "a-file is a file, not a folder"),
    ("a-file", "exists and is not a folder"),
    ("full", "already exists and is not empty; use --resume"),
    ("x" * 256, "is 256 bytes, longer than the 255 this file system allows"),
    ("runs/" + "é" * 128, "is 256 bytes, longer than the 255"),
])
def test_a_run_folder_that_cannot_be_created_is_refused_with_the_reason(tmp_path, where, reason):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    path = Path(where) if where.startswith("/") else tmp_path / where
    with pytest.raises(RunInputError) as refused:
        check_new_run_path(path)
    assert reason in str(refused.value)
    with pytest.raises(RunInputError):
        create_run(path, **FILES)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(RunInputError, match=r"cannot create the run folder .*/runs/r: .*: Read-only file system"):
        check_new_run_path(tmp_path / "runs" / "r")


def test_an_empty_folder_is_taken_and_a_symlink_is_not(tmp_path):
    (tmp_path / "empty").mkdir()
    run = create_run_dir(tmp_path / "empty", **FILES)
    assert (run.path / "manifest.json").is_file()
    (tmp_path / "link").symlink_to(tmp_path / "other")
    with pytest.raises(RunInputError, match="exists and is a symbolic link"):
        check_new_run_path(tmp_path / "link")


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (b"{not json", "is damaged: not JSON"),
    (b"\xff\xfe\x00garbage", "is damaged: not UTF-8 text"),
    (b"[1, 2]", "is damaged: a JSON list, not an object"),
    (b'{"resumes": {}}', "is damaged: its `resumes` is a dict, not a list"),
])
def test_a_damaged_manifest_is_named_with_what_is_wrong(tmp_path, content, reason):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(RunFolderDamaged) as damaged:
        RunDir(tmp_path).read_manifest()
    assert str(damaged.value).startswith(f"{tmp_path / 'manifest.json'} {reason}")
    assert damaged.value.path == tmp_path / "manifest.json"


def test_a_manifest_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(RunFolderDamaged, match="manifest.json is a folder, not a file"):
        read_manifest_file(tmp_path / "manifest.json")


def test_a_refused_manifest_write_keeps_the_old_one_and_no_temporary_file(tmp_path, monkeypatch):
    import tabula.runtime.rundir as rundir

    run = RunDir(tmp_path)
    run.write_manifest({"a": 1, "resumes": []})

    def full_disk(path, text):
        path.write_text(text[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "_write_synced", full_disk)
    with pytest.raises(OSError):
        run.write_manifest({"a": 2, "resumes": []})
    assert run.read_manifest() == {"a": 1, "resumes": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# ---------------------------------------------------------------- events


def test_a_session_after_a_torn_line_starts_on_a_fresh_one(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind":"start","time":1,"step":0,"tokens":0}\n{"kind":"train","time":2,"st')  # killed mid-write
    with EventWriter(path) as writer:
        writer.emit("start", 8, 4096, run_name="r")
        writer.emit("end", 9, 4608, reason="stopped", error=None)
    events = read_events(path)
    assert [(e["kind"], e["step"]) for e in events] == [("start", 0), ("start", 8), ("end", 9)]
    assert end_event(tmp_path)["reason"] == "stopped"
    from tabula.tui.events import EventsReader

    reader = EventsReader(tmp_path)
    assert [e["kind"] for e in reader.read_new()] == ["start", "start", "end"] and reader.bad_lines == 1


def test_readers_skip_lines_that_are_not_events(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'\x00\xff\xfe garbage\n[1]\n{"kind":"train","time":1,"step":1,"tokens":512}\n"text"\n')
    assert read_events(path) == [{"kind": "train", "time": 1, "step": 1, "tokens": 512}]
    assert read_events(path, offset=path.stat().st_size) == []


def test_a_full_disk_loses_events_but_not_the_training_and_the_log_recovers(tmp_path):
    """An event the file system refuses still reaches the console (with one warning), and once the disk has
    room again the next event starts on a fresh line after whatever part was written."""
    path = tmp_path / "events.jsonl"
    seen = []
    writer = EventWriter(path)
    writer.listeners.append(seen.append)
    writer.emit("train", 1, 512, loss=1.0)
    real = writer._file

    class Full:
        def write(self, data):  # half a line fits, then the disk is full
            real.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    writer._file = Full()
    writer.emit("train", 2, 1024, loss=0.9)
    writer.emit("train", 3, 1536, loss=0.8)
    writer._file = real
    writer.emit("end", 3, 1536, reason="finished", error=None)
    writer.close()
    assert writer.lost == 2
    assert [(e["kind"], e["step"]) for e in seen] == [("train", 1), ("train", 2), ("log", 2), ("train", 3), ("end", 3)]
    assert seen[2]["message"].startswith(f"cannot write to {path} (No space left on device): the events from step 2 on")
    assert [(e["kind"], e["step"]) for e in read_events(path)] == [("train", 1), ("end", 3)]
    assert end_event(tmp_path)["reason"] == "finished"


def test_a_child_holding_the_lock_is_named_in_the_refusal(tmp_path):
    with RunLock.acquire(tmp_path) as lock:
        lock.add_holder(4242, "DeepSpeed launcher")
        with pytest.raises(RunLocked, match=rf"\(pid {os.getpid()} on host \S+ with its DeepSpeed launcher, pid 4242, since "):
            RunLock.acquire(tmp_path)
