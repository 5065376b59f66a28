"""The run-directory protocol: control requests (atomic, known names), the runtime's side of them,
the end-event lookup, and both layers agreeing on the event kinds."""

from __future__ import annotations

import json
import os

import pytest

from tabula.schemas import rundir_protocol as protocol
from tabula.schemas.rundir_protocol import ControlFolder, end_event, pending, request


def test_control_requests_appear_whole_and_only_known_names(tmp_path):
    path = request(tmp_path, "stop")
    assert path == tmp_path / "control" / "stop" and path.read_bytes() == b""
    request(tmp_path, "stop")
    assert sorted(os.listdir(tmp_path / "control")) == ["stop"]  # no temporary files left behind
    assert pending(tmp_path) == ["stop"]
    with pytest.raises(ValueError, match="stop, checkpoint, eval"):
        request(tmp_path, "halt")


def test_the_runtime_sees_requests_as_flags_and_deletes_what_it_acted_on(tmp_path):
    folder = ControlFolder(tmp_path)
    assert (tmp_path / "control").is_dir() and folder.poll() == 0
    request(tmp_path, "eval")
    request(tmp_path, "checkpoint")
    (tmp_path / "control" / ".stop-half-written").touch()  # a request being written is not one yet
    (tmp_path / "control" / "notes.txt").touch()
    flags = folder.poll()
    assert flags == protocol.EVAL | protocol.CHECKPOINT and protocol.names(flags) == ["checkpoint", "eval"]
    folder.done(protocol.EVAL)
    assert pending(tmp_path) == ["checkpoint"]
    request(tmp_path, "stop")
    assert folder.clear() == ["stop", "checkpoint"] and pending(tmp_path) == []
    assert sorted(os.listdir(tmp_path / "control")) == [".stop-half-written", "notes.txt"]  # left alone


def test_no_run_dir_and_no_folder_mean_no_requests(tmp_path):
    assert ControlFolder(None).poll() == 0 and ControlFolder(None).clear() == []
    assert pending(tmp_path / "absent") == [] and not (tmp_path / "absent").exists()  # reading creates nothing


def _write(run_dir, *events, tail: str = ""):
    with open(run_dir / protocol.EVENTS_FILE, "a", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps({"time": 0.0, "step": 0, "tokens": 0, **event}) + "\n")
        handle.write(tail)


def test_end_event_is_the_latest_sessions_end(tmp_path):
    assert end_event(tmp_path) is None  # no events file yet
    _write(tmp_path, {"kind": "start"}, {"kind": "train", "loss": 3.0})
    assert end_event(tmp_path) is None  # running
    _write(tmp_path, {"kind": "end", "reason": "stopped", "error": None})
    assert end_event(tmp_path)["reason"] == "stopped"
    _write(tmp_path, {"kind": "start", "resumed_from": "checkpoints/step-000010"}, {"kind": "train"})
    assert end_event(tmp_path) is None  # a resume runs: the earlier session's end is not its end
    _write(tmp_path, {"kind": "log", "level": "info", "message": 'not "end"'}, tail='{"kind": "end", "rea')
    assert end_event(tmp_path) is None  # a half-written last line is not an end yet
    _write(tmp_path, tail='son": "failed", "error": "boom", "time": 1, "step": 5, "tokens": 9}\n')
    assert end_event(tmp_path) == {"kind": "end", "reason": "failed", "error": "boom", "time": 1, "step": 5, "tokens": 9}


def test_end_event_reads_back_across_chunks_and_stops_at_its_limit(tmp_path):
    long_error = "x" * 200_000  # an end line longer than a read chunk
    _write(tmp_path, {"kind": "start"}, *({"kind": "train", "loss": 1.0} for _ in range(3000)),
           {"kind": "end", "reason": "failed", "error": long_error})
    assert end_event(tmp_path)["error"] == long_error
    other = tmp_path / "other"
    other.mkdir()
    _write(other, {"kind": "start"}, {"kind": "end", "reason": "finished", "error": None},
           *({"kind": "log", "level": "info", "message": "y" * 100} for _ in range(2000)))
    assert end_event(other)["reason"] == "finished"
    assert end_event(other, max_bytes=2**16) is None  # an end further back than asked is not looked for


def test_the_runtime_and_the_dashboard_know_the_same_event_kinds():
    from tabula.tui.state import _HANDLERS

    assert set(_HANDLERS) == set(protocol.EVENT_KINDS)
    assert protocol.EVENT_KINDS[0] == "start" and protocol.EVENT_KINDS[-1] == "end"


def test_the_protocol_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, tabula.schemas.rundir_protocol; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
