"""The exit codes of the `tabula` command: the one table every command (and the dashboard launcher)
returns from. The runtime knows none of them: it raises errors and returns outcomes, and the commands
map those here. Imports nothing heavy.

    0  OK          success; a run that finished or was stopped
    1  DIFFERS     `tabula diff` found differences
    2  BAD_INPUT   a bad spec, flag, path or data: nothing ran
    3  RUN_FAILED  a run that started and failed
    128 + N        a run stopped (with its checkpoint) by signal N: 130 SIGINT, 143 SIGTERM
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    DIFFERS = 1
    BAD_INPUT = 2
    RUN_FAILED = 3


def stopped_by(signal_name: str) -> int:
    """The exit code of a run stopped by `signal_name` ("SIGINT" -> 130, "SIGTERM" -> 143), as a shell
    reports a process ended by that signal."""
    return 128 + int(signal.Signals[signal_name])


INTERRUPTED = stopped_by("SIGINT")  # Ctrl-C outside a run (the command was interrupted)
