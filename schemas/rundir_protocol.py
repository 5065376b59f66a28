"""The run directory's protocol: the one interface between a training and whoever watches it.

    runs/<name>-<yyyymmdd-hhmmss>/
      spec.yaml  resolved.yaml  manifest.json  events.jsonl  tokenizer.json  checkpoints/  control/
      ranks/ (DeepSpeed ranks' errors)  output.log (a launched training's output)
      checkpoints/step-000500/model.safetensors ... (the rest of a checkpoint is runtime/checkpoint.py's)

The runtime writes the folder, the dashboard (or a script, or another machine sharing the file
system) reads it and drops control requests into it. Both import the names from here, and neither
imports the other. Torch-free. The contract in words is docs/interfaces.md ("The run directory").
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.yaml"  # the spec as the user wrote it
RESOLVED_FILE = "resolved.yaml"  # canonical form, overrides applied: its sha256 is the spec hash
MANIFEST_FILE = "manifest.json"
EVENTS_FILE = "events.jsonl"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-000500/: complete once renamed from .tmp-step-000500
WEIGHTS_FILE = "model.safetensors"  # a checkpoint's consolidated weights (tied weights stored once)
CONTROL_DIR = "control"
RANKS_DIR = "ranks"
OUTPUT_LOG = "output.log"

# ---------------------------------------------------------------- events

# Every event has `kind`, `time` (unix seconds), `step` (optimizer steps done) and `tokens` (training
# tokens seen); each kind adds these fields. A session of a run (its first start, or a resume)
# begins with `start`; a run that ends in order writes `end` last.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    # finetune: train.finetune's kind or null; trainable_parameters: those the optimizer updates (all of
    # `parameters` without a fine-tuning method; adapters included in both with one)
    "start": ("run_name", "spec_hash", "backend", "world_size", "device", "precision", "parameters", "trainable_parameters",
              "finetune", "total_steps", "total_tokens", "stages", "resumed_from"),
    "train": ("loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu", "memory", "stage"),
    "eval": ("val_loss", "val_ppl", "best_val_loss"),
    "stage": ("index", "seq_len", "mix"),
    "checkpoint": ("path", "best"),
    "sample": ("prompt", "text"),
    "log": ("level", "message"),
    "end": ("reason", "error"),
}
EVENT_KINDS = tuple(EVENT_FIELDS)
COMMON_FIELDS = ("kind", "time", "step", "tokens")
END_REASONS = ("finished", "stopped", "failed")
LOG_LEVELS = ("info", "warning", "error")

END_SEARCH_BYTES = 2**20  # how far back `end_event` looks: an end is the last line a session writes


def end_event(run_dir: str | os.PathLike[str], *, max_bytes: int = END_SEARCH_BYTES) -> dict[str, Any] | None:
    """The `end` event of the run's latest session, or None while it runs (or when it died without
    writing one).

    Reads events.jsonl backwards from its end, at most `max_bytes`: an `end` met first is the
    answer; a `start` met first means the latest session (a resume appends one to the same file)
    has not ended, whatever an earlier session wrote. A missing file gives None."""
    try:
        with open(Path(run_dir) / EVENTS_FILE, "rb") as file:
            position = file.seek(0, os.SEEK_END)
            carry, searched = b"", 0  # carry: the start of a line cut by the chunk boundary
            while position > 0 and searched < max_bytes:
                size = min(2**16, position)
                position -= size
                file.seek(position)
                lines = (file.read(size) + carry).split(b"\n")
                carry = lines.pop(0) if position > 0 else b""
                searched += size
                for line in reversed(lines):
                    found = _session_mark(line)
                    if found is not None:
                        return found if found.get("kind") == "end" else None
    except OSError:
        return None
    return None


def _session_mark(line: bytes) -> dict[str, Any] | None:
    """The event on `line` when it is a `start` or an `end`, else None."""
    if b'"end"' not in line and b'"start"' not in line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("kind") in ("start", "end") else None


# ---------------------------------------------------------------- control requests

# A request is an empty file control/<name>. The runtime looks once a step, acts at the next step,
# and deletes the file. Requests are bit flags so that ranks agree on them with one OR.
STOP, CHECKPOINT, EVAL = 1, 2, 4
REQUESTS = {"stop": STOP, "checkpoint": CHECKPOINT, "eval": EVAL}  # stop writes a checkpoint before it stops


def request(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Drop the control request `name` (stop, checkpoint or eval) into `run_dir/control/`.

    The file appears atomically (written under a temporary `.<name>-*` name, then renamed), so the
    runtime never sees a half-made request. Asking twice before the runtime acts is one request.
    Returns the file's path; raises ValueError for an unknown name."""
    if name not in REQUESTS:
        raise ValueError(f"unknown control request {name!r}; expected one of {', '.join(REQUESTS)}")
    folder = Path(run_dir) / CONTROL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
    os.close(fd)
    os.replace(temporary, target)
    return target


def pending(run_dir: str | os.PathLike[str]) -> list[str]:
    """The requests written and not yet acted on, in the order of REQUESTS."""
    flags = ControlFolder(run_dir, create=False).poll()
    return names(flags)


def names(flags: int) -> list[str]:
    """The request names set in `flags`."""
    return [name for name, flag in REQUESTS.items() if flags & flag]


class ControlFolder:
    """The runtime's side: which requests are present (`poll`, one `os.scandir` of a small folder),
    and deleting them once acted on (`done`). `run_dir=None` (ranks other than 0) sees none."""

    def __init__(self, run_dir: str | os.PathLike[str] | None, *, create: bool = True) -> None:
        self.path = Path(run_dir) / CONTROL_DIR if run_dir is not None else None
        if self.path is not None and create:
            self.path.mkdir(parents=True, exist_ok=True)

    def poll(self) -> int:
        """The requests present now, as flags (0 when none). Other file names (a request being
        written, anything else) are left alone."""
        if self.path is None:
            return 0
        flags = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    flags |= REQUESTS.get(entry.name, 0)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return flags

    def done(self, flags: int) -> None:
        """Delete the request files for `flags` (acted upon)."""
        if self.path is None:
            return
        for name in names(flags):
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass

    def clear(self) -> list[str]:
        """Delete the requests present now and return their names: at the start of a session they were
        left by an earlier one (a request sent as that run ended, or crashed), and acting on them would
        stop a resumed run at its first step."""
        flags = self.poll()
        self.done(flags)
        return names(flags)
