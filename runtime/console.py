"""Headless progress: one compact line per event, for a terminal, a log file or CI.

    step    40/183 | 655k/3.0M tok | loss 5.312 | lr 9.9e-04 | 6.1k tok/s | mfu 11% | ETA 6m10s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tabula.schemas.units import format_count, format_duration


def count(n: float) -> str:
    """Token counts and rates as the console writes them: one decimal, the spec's binary suffixes
    (1536 -> 1.5k, 3145728 -> 3.0M)."""
    return format_count(n, binary=True, decimals=1)


def parameters(n: float) -> str:
    """Parameter counts as `tabula plan` and papers write them: k = 1000 (278M, 1.3B)."""
    return format_count(n, decimals=1)


class Console:
    """An EventWriter listener that prints progress lines to `out` (stdout by default)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.total_steps = 0
        self.total_tokens = 0
        self.started = time.time()
        self.run_name = ""

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        handler = getattr(self, f"_{kind}", None)
        if handler is not None:
            handler(event)

    def _start(self, e: dict) -> None:
        self.total_steps, self.total_tokens, self.run_name = e["total_steps"], e["total_tokens"], e["run_name"]
        self.started = e["time"]
        stages = ", ".join(f"seq_len {s['seq_len']} until {count(s['until_tokens'])}" for s in e["stages"])
        resumed = f", resumed from {e['resumed_from']} at step {e['step']}" if e.get("resumed_from") else ""
        compiled = e.get("compile") or {}
        how = f"; {compiled['summary']}: {compiled['reason']}" if compiled.get("summary") else ""
        trained = f" ({parameters(e['trainable_parameters'])} trained, {e['finetune']})" if e.get("finetune") else ""
        self._print(
            f"{e['run_name']}: {parameters(e['parameters'])} parameters{trained}, {e['precision']} on {e['device']}"
            f" (x{e['world_size']}), {e['total_steps']} steps of {count(e['total_tokens'] / max(1, e['total_steps']))} tokens"
            f" = {count(e['total_tokens'])} tokens; {stages}{resumed}{how}"
        )

    def _train(self, e: dict) -> None:
        width = len(str(self.total_steps))
        parts = [
            f"step {e['step']:>{width}}/{self.total_steps}",
            f"{count(e['tokens'])}/{count(self.total_tokens)} tok",
            f"loss {e['loss']:.4f}" if e.get("loss") is not None else "loss nan",
            f"lr {e['lr']:.1e}",
            f"{count(e['tokens_per_s'])} tok/s",
        ]
        if e.get("mfu") is not None:
            parts.append(f"mfu {100 * e['mfu']:.0f}%")
        if e.get("skipped"):
            parts.append(f"{e['skipped']} skipped")
        if e.get("tokens_per_s"):
            parts.append(f"ETA {format_duration((self.total_tokens - e['tokens']) / e['tokens_per_s'])}")
        self._print(" | ".join(parts))

    def _eval(self, e: dict) -> None:
        self._print(f"eval at step {e['step']}: val_loss {e['val_loss']:.4f} (ppl {e['val_ppl']:.1f}), best {e['best_val_loss']:.4f}")

    def _sample(self, e: dict) -> None:
        text = (e["prompt"] + e["text"]).replace("\n", "⏎")
        self._print(f"  sample: {text[:160]}")

    def _stage(self, e: dict) -> None:
        mix = ", ".join(f"{name} {weight:.2f}" for name, weight in e["mix"].items())
        self._print(f"stage {e['index']}: seq_len {e['seq_len']}, mix {mix}")

    def _checkpoint(self, e: dict) -> None:
        self._print(f"checkpoint {e['path']}{' (best so far)' if e.get('best') else ''}")

    def _log(self, e: dict) -> None:
        self._print(e["message"] if e["level"] == "info" else f"{e['level']}: {e['message']}")

    def _end(self, e: dict) -> None:
        took = format_duration(e["time"] - self.started)
        line = f"{e['reason']} at step {e['step']} ({count(e['tokens'])} tokens) after {took}"
        if e.get("error"):
            line += f": {e['error']}"
        self._print(line)
