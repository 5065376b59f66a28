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



def test_a_folder_named_as_a_request_is_ignored_with_one_warning(tmp_path):
    """`mkdir control/eval` used to crash the run when it tried to delete the 'request'."""
    folder = ControlFolder(tmp_path)
    (tmp_path / "control" / "eval").mkdir()
    (tmp_path / "control" / "stop").symlink_to(tmp_path / "elsewhere")
    request(tmp_path, "checkpoint")
    assert folder.poll() == protocol.CHECKPOINT  # the real request still counts
    warnings = folder.take_warnings()
    assert len(warnings) == 2 and any("control/eval: it is a folder" in w for w in warnings)
    assert any("control/stop: it is a link" in w for w in warnings)
    folder.done(protocol.CHECKPOINT | protocol.EVAL)
    for _ in range(3):
        assert folder.poll() == 0
    assert folder.take_warnings() == []  # once, not every step
    assert (tmp_path / "control" / "eval").is_dir()  # left alone


def test_a_file_where_control_should_be_disables_requests_with_one_warning(tmp_path):
    (tmp_path / "control").write_text("not a folder")
    folder = ControlFolder(tmp_path)
    assert folder.poll() == 0 and folder.clear() == []
    folder.done(protocol.STOP)
    (warning,) = folder.take_warnings()
    assert "control cannot hold control requests (it is not a folder)" in warning and "goes on without them" in warning
    assert folder.take_warnings() == []
    assert pending(tmp_path) == []


def test_control_replaced_by_a_file_while_the_run_goes_on(tmp_path):
    folder = ControlFolder(tmp_path)
    (tmp_path / "control").rmdir()
    (tmp_path / "control").write_text("")
    assert folder.poll() == 0 and folder.poll() == 0
    assert len(folder.take_warnings()) == 1


def test_a_request_that_cannot_be_deleted_is_acted_on_once(tmp_path, monkeypatch):
    """A read-only control/ (or a file system that refuses): not a checkpoint at every step."""
    import pathlib

    folder = ControlFolder(tmp_path)
    request(tmp_path, "checkpoint")

    def refuse(path, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "unlink", refuse)
        assert folder.poll() == protocol.CHECKPOINT
        folder.done(protocol.CHECKPOINT)
        assert folder.poll() == 0 and folder.poll() == 0
        (warning,) = folder.take_warnings()
        assert "could not delete control/checkpoint after acting on it (Permission denied)" in warning
    os.unlink(tmp_path / "control" / "checkpoint")
    request(tmp_path, "checkpoint")  # a new request under the same name counts again
    assert folder.poll() == protocol.CHECKPOINT


def test_a_request_that_cannot_be_written_says_why(tmp_path):
    (tmp_path / "control").write_text("")
    with pytest.raises(protocol.ControlRequestError, match="control is not a folder"):
        request(tmp_path, "stop")
    other = tmp_path / "other"
    (other / "control" / "eval").mkdir(parents=True)
    with pytest.raises(protocol.ControlRequestError, match="eval is a folder, not a request file"):
        request(other, "eval")
    assert os.listdir(other / "control") == ["eval"]  # no temporary file left behind


def test_a_run_folder_is_one_with_any_of_its_files(tmp_path):
    assert not protocol.is_run_folder(tmp_path) and not protocol.is_run_folder(tmp_path / "absent")
    (tmp_path / "notes.txt").touch()
    assert not protocol.is_run_folder(tmp_path)
    (tmp_path / protocol.SPEC_FILE).touch()  # a run being created writes its files one by one
    assert protocol.is_run_folder(tmp_path)

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


@pytest.mark.parametrize("stage, done, total", [("tokenizing (bytes of text)", 1_310_720, 5_242_880),
                                                ("reading stdlib (documents)", 40, None), ("loading tokenizer", 1, 1)])
def test_preparation_lines_read_back(stage, done, total):
    """The runtime writes them on its output before the run folder exists; the dashboard reads them back."""
    line = protocol.prepare_line(stage, done, total)
    assert protocol.parse_prepare_line(line + "\n") == (stage, done, total)


@pytest.mark.parametrize("line", ["run folder: runs/tiny-20260101-000000", "note: the budget repeats the data 2 times",
                                  "warning: 3 checkpoints skipped", "", "step 5/10 | loss 3.2"])
def test_other_output_lines_are_no_preparation(line):
    assert protocol.parse_prepare_line(line) is None
