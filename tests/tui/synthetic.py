"""Deterministic events of a small run, as the runtime writes them (docs/interfaces.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

T0 = 1_790_000_000.0  # a fixed start time: snapshots never depend on the clock
TOTAL_STEPS = 200
BATCH_TOKENS = 16384


def start_event() -> dict:
    return {
        "kind": "start", "time": T0, "step": 0, "tokens": 0, "run_name": "quickstart-20261128-004100",
        "spec_hash": "3f9a1c2b7d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4", "backend": "local",
        "world_size": 1, "device": "cpu", "precision": "fp32", "parameters": 5_300_000,
        "total_steps": TOTAL_STEPS, "total_tokens": TOTAL_STEPS * BATCH_TOKENS,
        "stages": [{"index": 0, "until_tokens": 524288, "seq_len": 128, "mix": {"stdlib": 1.0}},
                   {"index": 1, "until_tokens": None, "seq_len": 256, "mix": {"stdlib": 1.0}}],
        "resumed_from": None,
    }


def train_event(step: int) -> dict:
    tokens = step * BATCH_TOKENS
    return {
        "kind": "train", "time": T0 + 0.5 * step, "step": step, "tokens": tokens,
        "loss": round(2.0 + 7.0 * math.exp(-step / 30), 4), "lr": 1e-3 * min(1.0, step / 10),
        "grad_norm": 0.5 + 1.0 / step, "tokens_per_s": 32768.0, "step_time": 0.5, "mfu": None,
        "memory": 512 * 2**20, "stage": 0 if tokens < 524288 else 1, "skipped": 0,
    }


def run_events(steps: int, *, end: str | None = None, error: str | None = None) -> list[dict]:
    """Events of a run `steps` steps in: start, train every 5 steps, a stage change at 512k tokens,
    an eval, sample and checkpoint every 50 steps, and an `end` event when `end` is given."""
    events = [start_event()]
    for step in range(5, steps + 1, 5):
        events.append(train_event(step))
        tokens, time = step * BATCH_TOKENS, T0 + 0.5 * step
        if step == 35:  # the first logged step past 512k tokens
            events.append({"kind": "stage", "time": time, "step": step, "tokens": tokens, "index": 1,
                           "seq_len": 256, "mix": {"stdlib": 1.0}})
        if step == 60:
            events.append({"kind": "log", "time": time, "step": step, "tokens": tokens,
                           "level": "warning", "message": "loss spike: 4.1 after 2.9 (grad norm 12.3, clipped to 1.0)"})
        if step % 50 == 0:
            val = 2.2 + 6.0 * math.exp(-step / 30)
            events.append({"kind": "eval", "time": time, "step": step, "tokens": tokens, "val_loss": val,
                           "val_ppl": math.exp(val), "best_val_loss": val})
            events.append({"kind": "sample", "time": time, "step": step, "tokens": tokens, "prompt": "def ",
                           "text": f"main(argv):\n    return parse(argv, step={step})"})
            events.append({"kind": "checkpoint", "time": time, "step": step, "tokens": tokens,
                           "path": f"checkpoints/step-{step:06d}", "best": True})
    if end is not None:
        events.append({"kind": "end", "time": T0 + 0.5 * steps + 1, "step": steps, "tokens": steps * BATCH_TOKENS,
                       "reason": end, "error": error})
    return events


def write_events(run_dir: Path, events: list[dict], *, mode: str = "w") -> Path:
    path = run_dir / "events.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as file:
        for event in events:
            file.write(json.dumps(event) + "\n")
    return path


def screen_text(app) -> str:
    """What the terminal shows now, as plain text lines."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
