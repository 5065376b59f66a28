"""Progress of a long prepare: a bar on a terminal, plain lines otherwise.

A progress reporter is any callable `(stage, done, total)`: `stage` names the step
("reading corpus", "tokenizing corpus"), `done` and `total` count units of it (total may be
None when unknown). `prepare(..., progress=None)` reports nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tabula.schemas.rundir_protocol import prepare_line

Progress = Callable[[str, int, "int | None"], None]


def terminal_progress(stream: TextIO = sys.stderr, every_s: float = 2.0) -> Progress:
    """A reporter writing to `stream`: a redrawn bar when it is a terminal, else one plain line
    per stage every `every_s` seconds and at its end."""
    tty = stream.isatty()
    state = {"stage": None, "last": 0.0}

    def report(stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        new_stage = stage != state["stage"]
        finished = total is not None and done >= total
        if tty:
            if new_stage and state["stage"] is not None:
                stream.write("\n")
            if total:
                filled = int(30 * min(done, total) / total)
                stream.write(f"\r{stage:<28} [{'#' * filled}{'.' * (30 - filled)}] {100 * done / total:5.1f}%")
            else:
                stream.write(f"\r{stage:<28} {done:,}")
            if finished:
                stream.write("\n")
            stream.flush()
        elif new_stage or finished or now - state["last"] >= every_s:
            stream.write(prepare_line(stage, done, total) + "\n")  # a dashboard beside the run reads these
            stream.flush()
            state["last"] = now
        state["stage"] = None if finished else stage

    return report
