"""Where benchmark results go after `tabula eval` on a run folder: a JSON file of the evaluation in
RUN_DIR/eval/, the latest score of each task in RUN_DIR/eval/results.json (what `tabula runs` shows),
a `benchmark` event in events.jsonl (the dashboard shows it), the run's Aim run (context
`{"subset": "benchmark"}`) and its TensorBoard folder when the spec has one.

The event is appended only while no session holds the run (its lock taken for the moment of the write):
a training running now owns its events file, and the evaluation's scores stay in eval/ alone then."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import EVAL_DIR, EVAL_RESULTS_FILE, EVENTS_FILE, MANIFEST_FILE

from .harness import BenchmarkResults


def checkpoint_progress(checkpoint: Path) -> tuple[int, int]:
    """(step, tokens) of a checkpoint folder, from its state.json; (0, 0) when unreadable."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
        return int(state.get("step", 0)), int(state.get("tokens", 0))
    except (OSError, ValueError, TypeError):
        return 0, 0


def save_results(run_dir: Path, results: BenchmarkResults, *, checkpoint: Path | None, now: float | None = None) -> Path:
    """Write eval/<time>-<tasks>.json and merge the scores into eval/results.json. Returns the first."""
    from tabula.runtime.rundir import write_atomically

    now = time.time() if now is None else now
    folder = Path(run_dir) / EVAL_DIR
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    names = "-".join(sorted(results.scores))[:80] or "none"
    record = {"time": now, "checkpoint": str(checkpoint) if checkpoint else None, "limit": results.limit,
              "scores": results.scores, "lm_eval": results.raw}
    path = folder / f"{stamp}-{names}.json"
    write_atomically(path, json.dumps(record, indent=2, default=str))
    latest_path = folder / EVAL_RESULTS_FILE
    try:
        latest = json.loads(latest_path.read_text())
        latest = latest if isinstance(latest, dict) and isinstance(latest.get("tasks"), dict) else {"tasks": {}}
    except (OSError, ValueError):
        latest = {"tasks": {}}
    for task, metrics in results.scores.items():
        latest["tasks"][task] = metrics
    latest.update(time=now, checkpoint=record["checkpoint"], file=path.name)
    write_atomically(latest_path, json.dumps(latest, indent=2))
    return path


def record_event(run_dir: Path, results: BenchmarkResults, *, checkpoint: Path | None) -> str | None:
    """Append the `benchmark` event; returns why it was not (a session holds the run), or None."""
    from tabula.runtime.errors import RunLocked
    from tabula.runtime.events import EventWriter
    from tabula.runtime.runlock import RunLock

    step, tokens = checkpoint_progress(checkpoint) if checkpoint else (0, 0)
    try:
        lock = RunLock.acquire(run_dir, command=["tabula", "eval"])
    except RunLocked:
        return "a session holds the run now: the scores are in eval/ only, not in events.jsonl"
    try:
        writer = EventWriter(Path(run_dir) / EVENTS_FILE)
        writer.emit("benchmark", step, tokens, results=results.scores, checkpoint=str(checkpoint) if checkpoint else None,
                    limit=results.limit)
        writer.close()
    finally:
        lock.release()
    return None


def record_trackers(run_dir: Path, spec, results: BenchmarkResults, *, checkpoint: Path | None) -> list[str]:
    """Record the scores in the run's Aim run and TensorBoard folder. Returns a note for each that failed."""
    notes = []
    step, _ = checkpoint_progress(checkpoint) if checkpoint else (0, 0)
    try:
        manifest = json.loads((Path(run_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        manifest = {}
    aim_info = manifest.get("aim") if isinstance(manifest, dict) else None
    if isinstance(aim_info, dict) and aim_info.get("run_hash") and aim_info.get("repo"):
        try:
            _to_aim(aim_info["repo"], aim_info["run_hash"], results.scores, step)
        except Exception as error:  # Aim is a convenience
            notes.append(f"Aim: {type(error).__name__}: {error}")
    if spec is not None and spec.track.tensorboard is not None:
        try:
            _to_tensorboard(Path(spec.track.tensorboard.dir) / Path(run_dir).name, results.scores, step)
        except Exception as error:
            notes.append(f"TensorBoard: {type(error).__name__}: {error}")
    return notes


def _to_aim(repo: str, run_hash: str, scores: dict[str, dict[str, float]], step: int) -> None:
    import aim

    from tabula.runtime.tracking import index_run

    run = aim.Run(run_hash=run_hash, repo=repo)
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            run.track(value, name=f"{task}/{metric}", step=step, context={"subset": "benchmark"})
    run.close()
    index_run(repo, run_hash)


def _to_tensorboard(folder: Path, scores: dict[str, dict[str, Any]], step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            writer.add_scalar(f"benchmark/{task}/{metric}", value, step)
    writer.close()
