"""events.jsonl: the run's record, one JSON object a line, appended and flushed, never rewritten.

The contract (file name, kinds and fields) is `tabula.schemas.rundir_protocol`; in words,
docs/interfaces.md. Every event has `kind`, `time` (unix seconds), `step` and `tokens`. Non-finite
floats are written as null so that every line is strict JSON.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to `path`. Listeners (the console, Aim) see each event after it is written.
    A writer with `path=None` writes nothing (ranks other than 0) but still calls listeners.

    Each event is one `write` of a whole line. A line the file system refuses (a full disk) is not an
    error that ends the training: the listeners still see the event, the first refusal reaches them as a
    warning, `lost` counts what is missing from the file, and the next line that can be written starts on
    a fresh line (as a session after one that died mid-write does)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = open(path, "ab", buffering=0) if path is not None else None
        # an earlier session died mid-write: its torn line ends, and this session starts on a fresh one
        self._torn = path is not None and not _ends_a_line(path)
        self.lost = 0  # events the file system refused
        self.listeners: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()  # the tracker's thread may log a warning

    def emit(self, kind: str, step: int, tokens: int, **fields: Any) -> dict:
        event = {"kind": kind, "time": round(time.time(), 3), "step": step, "tokens": tokens, **_clean(fields)}
        with self._lock:
            refused = self._write(event)
            for listener in self.listeners:
                listener(event)
            if refused is not None and self.lost == 1:
                warning = {"kind": "log", "time": event["time"], "step": step, "tokens": tokens, "level": "warning",
                           "message": f"cannot write to {self.path} ({refused}): the events from step {step} on are "
                                      f"shown but not recorded until it can be written again"}
                for listener in self.listeners:
                    listener(warning)
        return event

    def _write(self, event: dict) -> str | None:
        """Append the event's line; the OS's reason when it was refused (None when written)."""
        if self._file is None:
            return None
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        data = b"\n" + line if self._torn else line
        reason: str | None
        try:
            written = self._file.write(data)
        except OSError as error:
            reason = error.strerror or str(error)
        else:
            reason = None if written == len(data) else "a short write"
        if reason is None:
            self._torn = False
            return None
        self._torn = True  # part of the line may be in the file: the next one starts on a fresh line
        self.lost += 1
        return reason

    def log(self, level: str, message: str, step: int, tokens: int) -> dict:
        return self.emit("log", step, tokens, level=level, message=message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_a_line(path: Path) -> bool:
    """Whether the file is empty or ends with a newline."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def read_events(path: Path, *, offset: int = 0) -> list[dict]:
    """The events of a file from byte `offset` on (for tests and tools; the dashboard reads incrementally).
    A line that is not a JSON object (torn by a crash mid-write, or damaged) is skipped."""
    events = []
    with open(path, "rb") as handle:
        handle.seek(offset)
        for line in handle:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "kind" in event:
                events.append(event)
    return events
