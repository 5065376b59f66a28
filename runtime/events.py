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
    A writer with `path=None` writes nothing (ranks other than 0) but still calls listeners."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8") if path is not None else None
        self.listeners: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()  # the tracker's thread may log a warning

    def emit(self, kind: str, step: int, tokens: int, **fields: Any) -> dict:
        event = {"kind": kind, "time": round(time.time(), 3), "step": step, "tokens": tokens, **_clean(fields)}
        with self._lock:
            if self._file is not None:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._file.flush()
            for listener in self.listeners:
                listener(event)
        return event

    def log(self, level: str, message: str, step: int, tokens: int) -> dict:
        return self.emit("log", step, tokens, level=level, message=message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> list[dict]:
    """All events of a file (for tests and tools; the dashboard reads incrementally)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
