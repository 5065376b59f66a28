"""`tabula watch` on what is not a run: one clear line and exit 2, never a traceback or a wait forever."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from synthetic import run_events, write_events

from tabula.cli import main
from tabula.commands import watch


@pytest.fixture(autouse=True)
def short_wait(monkeypatch):
    monkeypatch.setattr(watch, "CREATION_WAIT_S", 0.3)
    monkeypatch.setattr(watch, "CREATION_POLL_S", 0.05)


def _watch(path, capsys) -> tuple[int, str]:
    code = main(["watch", str(path)])
    return code, capsys.readouterr().err


def test_a_folder_with_other_things_is_refused_at_once(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    code, err = _watch(tmp_path, capsys)
    assert code == 2 and f"{tmp_path} is not a run folder (it has no manifest.json" in err
    assert "Traceback" not in err


def test_a_runs_folder_names_its_latest_run(tmp_path, capsys):
    for name in ("tiny-20260101-000000", "tiny-20260102-000000"):
        write_events(tmp_path / name, run_events(5))
    os.utime(tmp_path / "tiny-20260101-000000", (1, 1))  # the older one
    code, err = _watch(tmp_path, capsys)
    assert code == 2 and f"holds 2 runs, the latest: tabula watch {tmp_path / 'tiny-20260102-000000'}" in err


def test_an_empty_folder_is_given_a_few_seconds_then_refused(tmp_path, capsys):
    started = time.monotonic()
    code, err = _watch(tmp_path, capsys)
    assert code == 2 and "is an empty folder, not a run" in err and "waiting a few seconds" in err
    assert time.monotonic() - started < 30  # it gave up (the wait is 0.3 s here): not a wait forever


def test_a_run_being_created_is_watchable(tmp_path, monkeypatch):
    """create_run_dir makes control/ and checkpoints/ first, then its files one by one."""
    monkeypatch.setattr(watch, "CREATION_WAIT_S", 30.0)
    (tmp_path / "control").mkdir()

    def create():
        time.sleep(0.2)
        (tmp_path / "spec.yaml").write_text("name: x\n")

    writer = threading.Thread(target=create)
    writer.start()
    try:
        assert watch.run_folder_problem(tmp_path) is None
    finally:
        writer.join()


def test_missing_paths_and_files_are_refused(tmp_path, capsys):
    code, err = _watch(tmp_path / "absent", capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "file").write_text("")
    code, err = _watch(tmp_path / "file", capsys)
    assert code == 2 and "is not a folder" in err


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_an_events_file_that_is_no_file_is_refused(tmp_path, capsys, kind):
    (tmp_path / "manifest.json").write_text("{}")
    if kind == "folder":
        (tmp_path / "events.jsonl").mkdir()
    else:
        os.mkfifo(tmp_path / "events.jsonl")  # opening it to read would block forever
    code, err = _watch(tmp_path, capsys)
    assert code == 2 and f"events.jsonl is a {kind}, not a file of events" in err


def test_watch_on_a_broken_run_exits_2_without_a_traceback(tmp_path):
    """As a user meets it: the command, its exit code, its one line."""
    (tmp_path / "events.jsonl").mkdir()
    result = subprocess.run([sys.executable, "-m", "tabula.cli", "watch", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"tabula watch: error: {tmp_path / 'events.jsonl'} is a folder, not a file of events"]
