"""Run folders written as a training writes them (manifest.json, resolved.yaml, events.jsonl), without
training: for the readers of run folders (`tabula runs`, `tabula compare`)."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_specs import tiny_spec_yaml


def fake_run(folder: Path, *, name: str, losses: list[float], overrides: tuple[str, ...] = (), end: str | None = "finished",
             val_losses: list[float] = (), benchmarks: dict | None = None, t0: float = 1_800_000_000.0) -> Path:
    """A run folder whose events record one train event per loss (512 tokens a step), an eval event per
    val loss, and an `end` with reason `end` (None: the session died without one)."""
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec_text

    spec = load_spec_text(tiny_spec_yaml(), overrides=overrides)
    folder.mkdir(parents=True)
    (folder / "resolved.yaml").write_text(canonical_yaml(spec))
    (folder / "manifest.json").write_text(json.dumps({"run_name": name, "spec_hash": spec_hash(spec),
                                                       "created": f"2026-11-29T10:{len(losses):02d}:00"}))
    events = [{"kind": "start", "time": t0, "step": 0, "tokens": 0, "run_name": name, "spec_hash": spec_hash(spec),
               "backend": "local", "total_tokens": 512 * len(losses)}]
    for step, loss in enumerate(losses, 1):
        events.append({"kind": "train", "time": t0 + 2 * step, "step": step, "tokens": 512 * step, "loss": loss, "lr": 1e-3})
    best = None
    for index, val in enumerate(val_losses, 1):
        best = val if best is None else min(best, val)
        events.append({"kind": "eval", "time": t0 + 100 + index, "step": index, "tokens": 1024 * index,
                       "val_loss": val, "val_ppl": 2.718 ** val, "best_val_loss": best})
    if end is not None:
        events.append({"kind": "end", "time": t0 + 600, "step": len(losses), "tokens": 512 * len(losses), "reason": end,
                       "error": None})
    with open(folder / "events.jsonl", "w") as file:
        for event in events:
            file.write(json.dumps(event) + "\n")
        file.write('{"kind": "train", "torn li')  # a line torn by a crash is skipped
    if benchmarks is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "results.json").write_text(json.dumps({"tasks": benchmarks}))
    return folder
