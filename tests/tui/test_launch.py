"""The launcher: training in its own session with its output in a file; the dashboard's failure
never ends the run. (Control requests: tests/schemas/test_rundir_protocol.py.)"""

from __future__ import annotations

import io
import json
import os
import sys

from synthetic import run_events

from tabula.tui import launch
from tabula.tui.dashboard import output_log_path

CHILD = """
import json, os, sys, time
run_dir = sys.argv[1]
print("preparing data", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
os.makedirs(run_dir, exist_ok=False)  # as the runtime does: it refuses a folder someone else filled
events = json.loads(sys.argv[2])
with open(os.path.join(run_dir, "events.jsonl"), "a") as f:
    for event in events:
        f.write(json.dumps(event) + "\\n"); f.flush(); time.sleep(0.01)
print("sid", os.getsid(0), flush=True)
sys.exit(int(sys.argv[3]))
"""


def test_training_runs_in_its_own_session_with_its_output_beside_the_new_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "quick-1"
    assert output_log_path(run_dir) == tmp_path / "runs" / "quick-1.output.log"
    process = launch.start_training([sys.executable, "-c", CHILD, str(run_dir), "[]", "0"], run_dir)
    assert process.wait(timeout=30) == 0
    assert not (run_dir / "output.log").exists()  # the folder was the runtime's to create
    log = (tmp_path / "runs" / "quick-1.output.log").read_text()
    assert "preparing data" in log and "a warning on stderr" in log
    child_sid = int(log.split("sid ")[1].split()[0])
    assert child_sid != os.getsid(0)  # a new session: Ctrl+C or a closed terminal never reach it


def test_a_dashboard_crash_does_not_end_the_run(tmp_path, monkeypatch):
    def broken_run(self):
        raise RuntimeError("the terminal went away")

    monkeypatch.setattr("tabula.tui.app.DashboardApp.run", broken_run)
    run_dir = tmp_path / "run"
    events = json.dumps(run_events(10, end="finished"))
    out = io.StringIO()
    code = launch.run_with_dashboard([sys.executable, "-c", CHILD, str(run_dir), events, "0"], run_dir, out=out)
    text = out.getvalue()
    assert code == 0
    assert "the dashboard failed; the run continues" in text and "the terminal went away" in text
    assert "step 10" in text and "run finished" in text  # followed with plain lines to its end


def test_a_failed_training_gives_exit_code_3(tmp_path, monkeypatch):
    monkeypatch.setattr("tabula.tui.app.DashboardApp.run", lambda self: None)  # q pressed at once
    run_dir = tmp_path / "run"
    out = io.StringIO()
    code = launch.run_with_dashboard([sys.executable, "-c", CHILD, str(run_dir), "[]", "1"], run_dir, out=out)
    assert code == 3
    assert "exited with code 1" in out.getvalue()


def test_a_training_ended_by_sigterm_was_stopped_not_failed(tmp_path, monkeypatch):
    monkeypatch.setattr("tabula.tui.app.DashboardApp.run", lambda self: None)
    out = io.StringIO()
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"  # as SIGTERM does while data is prepared
    assert launch.run_with_dashboard([sys.executable, "-c", kill_self], tmp_path / "run", out=out) == 0
    assert "ended by SIGTERM" in out.getvalue()


def test_the_end_of_a_run_is_summed_up(tmp_path, monkeypatch):
    monkeypatch.setattr("tabula.tui.app.DashboardApp.run", lambda self: None)
    run_dir = tmp_path / "run"
    out = io.StringIO()
    events = json.dumps(run_events(10, end="stopped"))
    assert launch.run_with_dashboard([sys.executable, "-c", CHILD, str(run_dir), events, "0"], run_dir, out=out) == 0
    assert f"tabula: run stopped at step 10  ({run_dir}; tabula watch {run_dir})" in out.getvalue()


def _run_command(argv, monkeypatch, *, tty: bool):
    """`tabula run ARGV` with stdout a terminal or not; returns what it started (dashboard or here)."""
    import argparse

    from tabula.commands import run as run_command
    from tabula.runtime.session import wants_ranks

    started = []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    monkeypatch.setattr(launch, "run_with_dashboard", lambda command, run_dir: started.append(("dashboard", command, run_dir)) or 0)

    def train_here(options, spec):  # what prepare_run then does: DeepSpeed ranks, or this process
        started.append(("launch", options.nproc) if wants_ranks(spec, options.nproc) else ("local",))
        return 0

    monkeypatch.setattr(run_command, "_train_here", train_here)
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    assert run_command.run(parser.parse_args(argv)) == 0
    return started


def test_a_deepspeed_run_in_a_terminal_opens_the_dashboard_on_a_child_that_launches_the_ranks(specs_dir, tmp_path, monkeypatch):
    argv = [str(specs_dir / "quickstart.yaml"), "parallel.backend=deepspeed", "--nproc", "2", "--run-dir", str(tmp_path / "r")]
    [(what, command, run_dir)] = _run_command(argv, monkeypatch, tty=True)
    assert what == "dashboard" and run_dir == tmp_path / "r"
    assert command[command.index("run") + 1:] == [*argv[:2], "--headless", "--nproc", "2", "--run-dir", str(tmp_path / "r")]
    assert _run_command(argv + ["--headless"], monkeypatch, tty=True) == [("launch", 2)]  # unchanged
    assert _run_command(argv, monkeypatch, tty=False) == [("launch", 2)]


def test_ranks_without_deepspeed_are_refused_before_any_dashboard(specs_dir, monkeypatch):
    # prepare_run refuses it (--nproc 2 needs parallel.backend=deepspeed); no dashboard on a child that would fail
    assert _run_command([str(specs_dir / "quickstart.yaml"), "--nproc", "2"], monkeypatch, tty=True) == [("launch", 2)]
    assert _run_command([str(specs_dir / "quickstart.yaml")], monkeypatch, tty=False) == [("local",)]
