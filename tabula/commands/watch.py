"""Open the live dashboard on a run directory: a run training now (here, on another machine
sharing the folder, or under DeepSpeed) or one that has ended.

Keys: q quit the dashboard (the run goes on), s stop the run with a checkpoint, c checkpoint now,
e evaluate now. Requests travel through RUN_DIR/control/ and the run acts on them at its next step.

RUN_DIR must be a run folder: one holding its manifest.json, resolved.yaml, spec.yaml or
events.jsonl. An empty folder may be a run being created this moment (its files appear one by
one): watch waits a few seconds for them before it says the folder is no run.
Exit status: 0 when the dashboard is closed, 2 when RUN_DIR is not a run folder or its
events.jsonl cannot be read.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tabula.schemas.rundir_protocol import EVENTS_FILE, MANIFEST_FILE, RESOLVED_FILE, is_run_folder

HELP = "watch a run directory in the live dashboard"

CREATION_WAIT_S = 5.0  # an empty folder: how long a run being created there has to write its first file
CREATION_POLL_S = 0.2
CREATION_ENTRIES = ("checkpoints", "control")  # what a run being created makes before its files


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds manifest.json and events.jsonl)")


def run(args) -> int:
    run_dir = Path(args.run_dir)
    problem = run_folder_problem(run_dir)
    if problem is None:
        from tabula.tui.events import events_file_problem

        problem = events_file_problem(run_dir)
    if problem is not None:
        sys.stderr.write(f"tabula watch: error: {problem}\n")
        return 2
    if not sys.stdout.isatty():
        sys.stderr.write(f"tabula watch: error: the dashboard needs a terminal; the run's record is {run_dir / EVENTS_FILE}\n")
        return 2
    from tabula.tui.app import DashboardApp
    from tabula.tui.launch import lower_priority

    lower_priority()  # a run training on this machine comes first
    DashboardApp(run_dir).run()
    return 0


def run_folder_problem(run_dir: Path, *, wait_s: float | None = None) -> str | None:
    """Why `run_dir` is no run folder to watch, or None when it is one. A folder that is empty, or holds only
    what a run being created makes first, is given `wait_s` (CREATION_WAIT_S) seconds to become one."""
    if not os.path.lexists(run_dir):
        return f"{run_dir} does not exist"
    if not run_dir.is_dir():
        return f"{run_dir} is not a folder; watch a run folder (runs/NAME-DATE-TIME)"
    deadline = time.monotonic() + (CREATION_WAIT_S if wait_s is None else wait_s)
    waited = False
    while not is_run_folder(run_dir):
        try:
            entries = [name for name in os.listdir(run_dir) if not name.startswith(".")]
        except OSError as error:
            return f"cannot read {run_dir}: {error.strerror or error}"
        if any(name not in CREATION_ENTRIES for name in entries):
            return _not_a_run(run_dir)
        if time.monotonic() >= deadline:
            return (f"{run_dir} is an empty folder, not a run (nothing appeared in it for {CREATION_WAIT_S:g} s); a run "
                    f"started with --run-dir {run_dir} writes its files there once its data is prepared: watch it then")
        if not waited:
            waited = True
            sys.stderr.write(f"tabula watch: {run_dir} is empty; waiting a few seconds for a run being created there\n")
            sys.stderr.flush()
        time.sleep(CREATION_POLL_S)
    return None


def _not_a_run(run_dir: Path) -> str:
    """The refusal for a folder with other things in it, naming the runs inside when it holds some (a runs folder)."""
    message = f"{run_dir} is not a run folder (it has no {MANIFEST_FILE}, {RESOLVED_FILE} or {EVENTS_FILE})"
    try:
        runs = sorted((p for p in run_dir.iterdir() if is_run_folder(p)), key=_modified)
    except OSError:
        runs = []
    if runs:
        message += f"; it holds {len(runs)} run{'s' * (len(runs) > 1)}, the latest: tabula watch {runs[-1]}"
    return message


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
