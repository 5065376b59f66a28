"""Open the live dashboard on a run directory: a run training now (here, on another machine
sharing the folder, or under DeepSpeed) or one that has ended.

Keys: q quit the dashboard (the run goes on), s stop the run with a checkpoint, c checkpoint now,
e evaluate now. Requests travel through RUN_DIR/control/ and the run acts on them at its next step.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tabula.schemas.rundir_protocol import EVENTS_FILE, MANIFEST_FILE

HELP = "watch a run directory in the live dashboard"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds events.jsonl)")


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        sys.stderr.write(f"tabula watch: error: {run_dir} is not a directory\n")
        return 2
    if not sys.stdout.isatty():
        sys.stderr.write(f"tabula watch: error: the dashboard needs a terminal; the run's record is {run_dir / EVENTS_FILE}\n")
        return 2
    if not (run_dir / EVENTS_FILE).exists() and not (run_dir / MANIFEST_FILE).exists():
        sys.stderr.write(f"tabula watch: note: {run_dir} has no events.jsonl yet; waiting for the run to write it\n")
    from tabula.tui.app import DashboardApp
    from tabula.tui.launch import lower_priority

    lower_priority()  # a run training on this machine comes first
    DashboardApp(run_dir).run()
    return 0
