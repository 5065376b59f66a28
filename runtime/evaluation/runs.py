"""What a run directory says about its run, read back torch-free: one row of `tabula runs` and the
curves `tabula compare` plots. Only the files the run directory protocol names are read
(`tabula.schemas.rundir_protocol`); a folder that is damaged or half-written gives `-` where a value
cannot be read, never an exception."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import (
    EVAL_DIR,
    EVAL_RESULTS_FILE,
    EVENTS_FILE,
    MANIFEST_FILE,
    end_event,
    is_run_folder,
    lock_owner,
)

# The metrics a curve can show: the field of a `train` event, or of an `eval` event.
TRAIN_CURVES = ("loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu", "memory")
EVAL_CURVES = ("val_loss", "val_ppl")
CURVES = TRAIN_CURVES + EVAL_CURVES


@dataclass(frozen=True)
class RunSummary:
    """One run directory at a glance. Values that cannot be read are None."""

    path: Path
    name: str
    spec_hash: str | None
    status: str  # finished | stopped | failed | running | ended without an end event | not started
    step: int | None
    tokens: int | None
    total_tokens: int | None
    best_val_loss: float | None
    wall_seconds: float | None
    backend: str | None
    created: str | None
    benchmarks: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "spec_hash": self.spec_hash, "status": self.status,
                "step": self.step, "tokens": self.tokens, "total_tokens": self.total_tokens,
                "best_val_loss": self.best_val_loss, "wall_seconds": self.wall_seconds, "backend": self.backend,
                "created": self.created, "benchmarks": self.benchmarks}


def find_runs(root: str | Path) -> list[Path]:
    """The run folders at `root`: `root` itself when it is one, else the run folders directly below it,
    oldest first (by manifest.json's `created`, then name). Hidden names (`.tmp-...`) are never runs."""
    root = Path(root)
    if is_run_folder(root):
        return [root]
    try:
        children = [child for child in root.iterdir() if not child.name.startswith(".") and is_run_folder(child)]
    except OSError:
        return []
    return sorted(children, key=lambda child: (str(_manifest(child).get("created") or ""), child.name))


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every event of the run (lines that are not a JSON object with a `kind` skipped); [] without a file."""
    events = []
    try:
        with open(Path(run_dir) / EVENTS_FILE, "rb") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("kind"), str):
                    events.append(event)
    except OSError:
        return []
    return events


def summarize_run(run_dir: str | Path, events: list[dict[str, Any]] | None = None) -> RunSummary:
    """The row of `tabula runs` for one run folder."""
    path = Path(run_dir)
    manifest = _manifest(path)
    events = read_events(path) if events is None else events
    starts = [event for event in events if event["kind"] == "start"]
    first = starts[0] if starts else {}
    last = events[-1] if events else {}
    best = [value for value in (_number(event.get("best_val_loss")) for event in events if event["kind"] == "eval")
            if value is not None]
    return RunSummary(
        path=path,
        name=_text(manifest.get("run_name")) or _text(first.get("run_name")) or path.name,
        spec_hash=_text(manifest.get("spec_hash")) or _text(first.get("spec_hash")),
        status=_status(path, events),
        step=_int(last.get("step")),
        tokens=_int(last.get("tokens")),
        total_tokens=_int(starts[-1].get("total_tokens")) if starts else None,
        best_val_loss=min(best) if best else None,
        wall_seconds=wall_seconds(events),
        backend=_text(starts[-1].get("backend")) if starts else None,
        created=_text(manifest.get("created")),
        benchmarks=benchmark_scores(path),
    )


def wall_seconds(events: list[dict[str, Any]]) -> float | None:
    """The time the run's sessions took together: each from its `start` to the last event it wrote (time
    between sessions, a run waiting to be resumed, is not counted)."""
    total, begun, latest = 0.0, None, None
    for event in events:
        time = _number(event.get("time"))
        if time is None:
            continue
        if event["kind"] == "start":
            if begun is not None and latest is not None:
                total += max(0.0, latest - begun)
            begun = latest = time
        elif begun is not None:
            latest = time
    if begun is None:
        return None
    return total + max(0.0, (latest or begun) - begun)


def benchmark_scores(run_dir: str | Path) -> dict[str, float]:
    """The latest benchmark scores saved in the run's eval/results.json: {"task/metric": value}."""
    try:
        saved = json.loads((Path(run_dir) / EVAL_DIR / EVAL_RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    tasks = saved.get("tasks") if isinstance(saved, dict) else None
    scores = {}
    for task, metrics in (tasks.items() if isinstance(tasks, dict) else ()):
        for metric, value in (metrics.items() if isinstance(metrics, dict) else ()):
            number = _number(value)
            if number is not None:
                scores[f"{task}/{metric}"] = number
    return scores


def curve(events: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(tokens, value) points of `metric` (one of CURVES) over the run, in event order. A resumed run's
    points from the resumed checkpoint on replace the points past it that the earlier session wrote."""
    if metric not in CURVES:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(CURVES)}")
    kind = "train" if metric in TRAIN_CURVES else "eval"
    points: list[tuple[int, float]] = []
    for event in events:
        tokens = _int(event.get("tokens"))
        if event["kind"] == "start" and tokens is not None:
            points = [point for point in points if point[0] <= tokens]
        if event["kind"] != kind or tokens is None:
            continue
        value = _number(event.get(metric))
        if value is not None:
            points.append((tokens, value))
    return points


def _status(path: Path, events: list[dict[str, Any]]) -> str:
    end = end_event(path)
    if end is not None:
        return _text(end.get("reason")) or "ended"
    if lock_owner(path) is not None:
        return "running"
    if not any(event["kind"] == "start" for event in events):
        return "not started"
    return "ended without an end event"


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
