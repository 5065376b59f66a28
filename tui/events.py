"""Tail a run's events.jsonl incrementally: a byte offset, never a re-read.

The runtime appends one JSON object a line and flushes; a reader may see the last line half
written. `EventsReader.read_new()` returns only the complete lines added since the last call and
keeps the partial tail for the next one, so watching a run of millions of steps costs the same
per poll as watching a run of ten.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import EVENTS_FILE

MAX_READ_BYTES = 2**20  # per read: about 5k events, a few tens of milliseconds to parse
MAX_LINE_BYTES = 2**24  # no event is this long (a sample, an error's text): past it, the line is garbage


def events_file_problem(run_dir: str | os.PathLike[str]) -> str | None:
    """Why `run_dir/events.jsonl` cannot be read as a run's events (a folder, a device, a pipe, no
    permission), or None when it can, or does not exist yet. Opens nothing that could block."""
    path = Path(run_dir) / EVENTS_FILE
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    if not stat.S_ISREG(status.st_mode):
        return f"{path} is {_kind(status.st_mode)}, not a file of events"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class EventsReader:
    """Reads the events a run appends to `run_dir/events.jsonl`, from where it left off."""

    def __init__(self, run_dir: str | os.PathLike[str], *, max_read_bytes: int = MAX_READ_BYTES,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0  # bytes of the file consumed, partial line included
        self.max_read_bytes = max_read_bytes
        self.max_line_bytes = max_line_bytes
        self.bad_lines = 0
        self.problem: str | None = None  # why the file cannot be read now (a folder, no permission), else None
        self._partial = b""
        self._dropping = False  # inside a line longer than max_line_bytes: dropped up to its newline

    @property
    def caught_up(self) -> bool:
        """Whether the last read reached the end of the file as it was then."""
        try:
            return self.path.stat().st_size <= self.offset or self.problem is not None
        except OSError:
            return True

    def read_new(self) -> list[dict[str, Any]]:
        """The complete events appended since the last call (at most `max_read_bytes` of them).

        A missing file (the run has not started writing) gives []. A file that shrank (replaced
        by a new run) is read again from its start. Lines that are not JSON objects with a `kind`
        (garbage, binary, a line longer than `max_line_bytes`) are counted in `bad_lines` and
        skipped. A path that is no regular file or cannot be read gives [] and says why in
        `problem`; reading never blocks (a pipe) and never raises."""
        self.problem = events_file_problem(self.path.parent)
        if self.problem is not None:
            return []
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < self.offset:
                    self.offset, self._partial, self._dropping = 0, b"", False
                if size == self.offset:
                    return []
                file.seek(self.offset)
                chunk = file.read(self.max_read_bytes)
        except FileNotFoundError:
            return []
        except OSError as error:  # replaced by something unreadable between the look and the read
            self.problem = f"cannot read {self.path}: {error.strerror or error}"
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        if self._dropping and lines:  # the end of an overlong line
            self._dropping = False
            lines.pop(0)
        if len(self._partial) > self.max_line_bytes:
            if not self._dropping:
                self.bad_lines += 1
            self._partial, self._dropping = b"", True
        events = []
        for line in lines:
            if not line.strip():
                continue
            event = _parse(line)
            if event is None:
                self.bad_lines += 1
            else:
                events.append(event)
        return events


def _parse(line: bytes) -> dict[str, Any] | None:
    """The event on `line`, or None when it is not a JSON object with a kind."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        return None
    return event if isinstance(event, dict) and "kind" in event else None
