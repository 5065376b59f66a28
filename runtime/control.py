"""Requests dropped into a run's control/ folder (by the dashboard, or `touch`): stop, checkpoint, eval.

The runtime looks once per step (one `os.scandir` of a small folder) and deletes each request after
acting on it. Requests are bit flags so that ranks can agree on them with one OR (`engine.sync_flags`).
"""

from __future__ import annotations

import os
from pathlib import Path

CONTROL_DIR = "control"
STOP, CHECKPOINT, EVAL = 1, 2, 4
REQUESTS = {"stop": STOP, "checkpoint": CHECKPOINT, "eval": EVAL}


class ControlFolder:
    def __init__(self, run_dir: Path | None) -> None:
        self.path = Path(run_dir) / CONTROL_DIR if run_dir is not None else None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)

    def poll(self) -> int:
        """The requests present now, as flags (0 when none). Unknown file names are left alone."""
        if self.path is None:
            return 0
        flags = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    flags |= REQUESTS.get(entry.name, 0)
        except FileNotFoundError:
            return 0
        return flags

    def done(self, flags: int) -> None:
        """Delete the request files for `flags` (acted upon)."""
        if self.path is None:
            return
        for name, flag in REQUESTS.items():
            if flags & flag:
                try:
                    (self.path / name).unlink()
                except FileNotFoundError:
                    pass


    def clear(self) -> list[str]:
        """Delete the requests present now and return their names: at the start of a session they were
        left by an earlier one (a request sent as that run ended, or crashed), and acting on them would
        stop a resumed run at its first step."""
        if self.path is None:
            return []
        flags = self.poll()
        self.done(flags)
        return [name for name, flag in REQUESTS.items() if flags & flag]


def request(run_dir: Path, name: str) -> None:
    """Drop a request (what the dashboard does): `stop`, `checkpoint` or `eval`."""
    if name not in REQUESTS:
        raise ValueError(f"unknown request {name!r}; expected one of {', '.join(REQUESTS)}")
    folder = Path(run_dir) / CONTROL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).touch()
