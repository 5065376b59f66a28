"""Tail a run's events.jsonl incrementally: a byte offset, never a re-read.

The runtime appends one JSON object a line and flushes; a reader may see the last line half
written. `EventsReader.read_new()` returns only the complete lines added since the last call and
keeps the partial tail for the next one, so watching a run of millions of steps costs the same
per poll as watching a run of ten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import EVENTS_FILE

MAX_READ_BYTES = 2**20  # per read: about 5k events, a few tens of milliseconds to parse


class EventsReader:
    """Reads the events a run appends to `run_dir/events.jsonl`, from where it left off."""

    def __init__(self, run_dir: str | os.PathLike[str], *, max_read_bytes: int = MAX_READ_BYTES) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0  # bytes of the file consumed, partial line included
        self.max_read_bytes = max_read_bytes
        self.bad_lines = 0
        self._partial = b""

    @property
    def caught_up(self) -> bool:
        """Whether the last read reached the end of the file as it was then."""
        try:
            return self.path.stat().st_size <= self.offset
        except FileNotFoundError:
            return True

    def read_new(self) -> list[dict[str, Any]]:
        """The complete events appended since the last call (at most `max_read_bytes` of them).

        A missing file (the run has not started writing) gives []. A file that shrank (replaced
        by a new run) is read again from its start. Lines that are not JSON objects are counted
        in `bad_lines` and skipped."""
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < self.offset:
                    self.offset, self._partial = 0, b""
                if size == self.offset:
                    return []
                file.seek(self.offset)
                chunk = file.read(self.max_read_bytes)
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(event, dict) and "kind" in event:
                events.append(event)
            else:
                self.bad_lines += 1
        return events
