"""`tabula run` in a terminal: the training in its own process, the dashboard beside it.

The two are kept apart so that neither can take the other down: the training runs in its own
session and process group (a dashboard crash, a closed terminal or Ctrl+C in the dashboard never
signals it) and writes its output to `RUN_DIR/output.log`, never to the dashboard's terminal;
the dashboard only reads the run directory and polls the process for its exit.
Its output goes to RUN_DIR/output.log, or RUN_DIR.output.log beside a run folder that does not
exist yet (the runtime creates new runs only in absent or empty folders).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence, TextIO

from tabula.exit_codes import ExitCode
from tabula.schemas.rundir_protocol import ControlRequestError, end_event, request

from .dashboard import output_log_path
from .dialogs import LEAVE
from .events import EventsReader
from .format import format_count
from .state import stop_signal

DASHBOARD_NICE = 10  # the display yields the CPU to the training it shows


def lower_priority() -> None:
    """Make this process (a dashboard) yield the CPU to training on the same machine."""
    try:
        os.nice(DASHBOARD_NICE)
    except OSError:  # not permitted here: the dashboard still works, just at normal priority
        pass


def start_training(command_argv: Sequence[str], run_dir: str | os.PathLike[str]) -> subprocess.Popen:
    """Start `command_argv` in a new session (its own process group), stdin closed, stdout and stderr
    appended to `output_log_path(run_dir)`. Returns the process."""
    log_path = output_log_path(Path(run_dir))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(command_argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_with_dashboard(command_argv: Sequence[str], run_dir: str | os.PathLike[str], *, out: TextIO | None = None) -> int:
    """Run the training command `command_argv` (which must write its run directory at `run_dir`)
    under the dashboard, and return the exit code for `tabula run`.

    - q in the dashboard asks: stop the run with a checkpoint (then this waits for it to finish
      and returns its code) or leave it running in the background (returns 0 at once).
    - The run ending keeps the dashboard open on its final state until q.
    - If the dashboard fails, the error is printed and the run is followed with plain lines.
    Exit codes: 0 the run finished or was stopped (SIGTERM/SIGINT included) or left running; 2 the
    command refused its input; 3 the run failed."""
    out = out or sys.stdout
    run_dir = Path(run_dir)
    log_path = output_log_path(run_dir)
    process = start_training(command_argv, run_dir)
    lower_priority()  # after the start: the training keeps the normal priority
    answer: str | None = None
    try:
        from .app import DashboardApp

        answer = DashboardApp(run_dir, process=process, output_log=log_path).run()
    except Exception:  # the dashboard's failure must not end the run: report it and follow plainly
        out.write("tabula: the dashboard failed; the run continues.\n" + traceback.format_exc(limit=3))
        out.flush()
        return _finish(follow_plainly(process, run_dir, out), log_path, out)
    if answer == LEAVE and process.poll() is None:
        out.write(f"tabula: the run goes on in the background (pid {process.pid}); its output is in "
                  f"{log_path}\n  watch it:  tabula watch {run_dir}\n")
        return ExitCode.OK
    if process.poll() is None:
        out.write("tabula: waiting for the run to write its checkpoint and stop (Ctrl+C leaves it running) ...\n")
        out.flush()
        try:
            process.wait()
        except KeyboardInterrupt:
            out.write(f"tabula: left running in the background (pid {process.pid}); tabula watch {run_dir}\n")
            return ExitCode.OK
    return _finish(process.returncode, log_path, out, run_dir)


def follow_plainly(process: subprocess.Popen, run_dir: Path, out: TextIO, interval: float = 1.0) -> int | None:
    """Print one line per new train/eval/log/end event until the process exits; return its code.
    Ctrl+C asks the run to stop with a checkpoint; a second Ctrl+C leaves it running (returns None)."""

    reader = EventsReader(run_dir)
    stopping = False
    while True:
        try:
            for event in reader.read_new():
                line = plain_line(event)
                if line:
                    out.write(line + "\n")
            out.flush()
            code = process.poll()
            if code is not None:
                return code
            time.sleep(interval)
        except KeyboardInterrupt:
            if stopping:
                out.write(f"tabula: left running in the background (pid {process.pid})\n")
                return None
            stopping = True
            try:
                request(run_dir, "stop")
            except ControlRequestError as error:  # the run reads no requests: SIGTERM stops it as a request would
                out.write(f"tabula: {error}; sending it SIGTERM (Ctrl+C again leaves it running)\n")
                process.terminate()
                continue
            out.write("tabula: stop requested; the run writes a checkpoint and stops (Ctrl+C again leaves it running)\n")


def plain_line(event: dict) -> str | None:
    """One console line for an event, or None for kinds not worth a line."""
    kind, step, tokens = event.get("kind"), event.get("step"), event.get("tokens")
    if kind == "train":
        return f"step {step}  tokens {format_count(tokens)}  loss {event.get('loss')}  lr {event.get('lr')}"
    if kind == "eval":
        return f"step {step}  val_loss {event.get('val_loss')}"
    if kind == "log":
        return f"[{event.get('level')}] {event.get('message')}"
    if kind in ("stage", "checkpoint"):
        return f"{kind} {event.get('index', event.get('path'))}"
    if kind == "end":
        return f"run {event.get('reason')}" + (f": {event['error']}" if event.get("error") else "")
    return None


def _finish(code: int | None, log_path: Path, out: TextIO, run_dir: Path | None = None) -> int:
    if code is None:
        return ExitCode.OK
    if run_dir is not None:
        end = end_event(run_dir)
        if end is not None:
            error = f": {end['error']}" if end.get("error") else ""
            out.write(f"tabula: run {end.get('reason')} at step {end.get('step')}{error}  ({run_dir}; tabula watch {run_dir})\n")
    if code == 0:
        return ExitCode.OK
    if stop_signal(code):  # stopped (s, q then stop, or someone's kill): as a stop request, not a failure
        out.write(f"tabula: the training process ended by {stop_signal(code)}; its output is in {log_path}\n")
        return ExitCode.OK
    out.write(f"tabula: the training process exited with code {code}; its output is in {log_path}\n")
    return ExitCode.BAD_INPUT if code == ExitCode.BAD_INPUT else ExitCode.RUN_FAILED
