"""What the dashboard knows about a run, folded from its events one at a time.

`RunState.apply(event)` is the only way in; everything on screen is read from a `RunState`, so
the dashboard, its tests and any other front end agree on what the events mean. Time comes
from the events themselves plus a clock the caller passes in, which keeps rendering
deterministic under test.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tabula.schemas.rundir_protocol import parse_prepare_line

from .format import format_duration

EMA_WEIGHT = 0.9  # smoothing of the displayed loss: about the last 10 logged values
STALE_AFTER_S = 60.0  # a run silent this long (or 5 of its usual gaps between train events) is reported as such
LOG_LINES = 500
SERIES_POINTS = 1024  # chart points kept per series; older points are thinned, never re-read


class Series:
    """A chart series bounded in memory: when full, every other point is dropped and the
    stride doubles, so a run of any length keeps an even sample of its whole history."""

    def __init__(self, capacity: int = SERIES_POINTS) -> None:
        self.capacity = capacity
        self.xs: list[float] = []
        self.ys: list[float] = []
        self._stride = 1
        self._seen = 0

    def add(self, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(y):
            return
        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) >= self.capacity:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self._stride *= 2

    def __len__(self) -> int:
        return len(self.xs)

    def copy(self) -> Series:
        """The points as they are now (a chart draws them later, while this one keeps growing)."""
        copy = Series(self.capacity)
        copy.xs, copy.ys, copy._stride, copy._seen = list(self.xs), list(self.ys), self._stride, self._seen
        return copy


@dataclass
class LogLine:
    time: float
    level: str  # info | warning | error
    text: str


@dataclass
class RunState:
    """The run as its events describe it. Numbers are None until an event reports them."""

    # from `start`
    run_name: str | None = None
    spec_hash: str | None = None
    backend: str | None = None
    world_size: int | None = None
    device: str | None = None
    precision: str | None = None
    parameters: int | None = None
    trainable_parameters: int | None = None
    finetune: str | None = None  # train.finetune's method, or None
    total_steps: int | None = None
    total_tokens: int | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    start_time: float | None = None
    start_tokens: int = 0
    # every event
    step: int = 0
    tokens: int = 0
    first_time: float | None = None
    last_time: float | None = None
    events: int = 0
    # `train`
    loss: float | None = None
    loss_ema: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    step_time: float | None = None
    mfu: float | None = None
    memory: int | None = None
    skipped: int | None = None  # updates refused as non-finite, over the train events read (None: none said)
    # `routing` (a mixture of experts)
    balance_loss: float | None = None  # the layers' mean balancing loss (1 when uniform)
    expert_imbalance: float | None = None  # the layers' mean busiest share over the uniform share (1 when uniform)
    expert_load: list[list[float]] | None = None  # each MoE layer's share of assignments per expert
    # `eval`
    val_loss: float | None = None
    val_ppl: float | None = None
    best_val_loss: float | None = None
    # `stage`
    stage_index: int | None = None
    seq_len: int | None = None
    mix: dict[str, float] | None = None
    # `checkpoint`, `sample`
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    sample_prompt: str | None = None
    sample_text: str | None = None
    # `end`; or the training process's exit, reported by whoever started it
    end_reason: str | None = None
    error: str | None = None
    preparing: str | None = None  # the launched process's latest output line, before its first event
    prepare: tuple[str, int, int | None] | None = None  # that line as data-preparation progress: (step, done, total)
    alive: bool | None = None  # whether the training process runs (known only to who launched it)
    events_problem: str | None = None  # why events.jsonl cannot be read now (a folder, no permission), from the reader
    train_gap: float | None = None  # smoothed seconds between train events
    _last_train_time: float | None = None
    # charts and log
    train_loss: Series = field(default_factory=Series)
    val_loss_series: Series = field(default_factory=Series)
    lr_series: Series = field(default_factory=Series)
    tokens_per_s_series: Series = field(default_factory=Series)
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    log_total: int = 0  # lines ever logged, so a view can tell which are new

    # ------------------------------------------------------------ folding events

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event (a dict from events.jsonl) into the state; unknown kinds are ignored.

        The run directory may come from another version or another tool: a field of the wrong
        type reads as absent, never as a crash of the dashboard."""
        self.events += 1
        time = _number(event.get("time"))
        time = time if time is not None and math.isfinite(time) else None  # Infinity/NaN parse as JSON, mean nothing
        if time is not None:
            self.first_time = time if self.first_time is None else self.first_time
            self.last_time = time if self.last_time is None else max(self.last_time, time)
        step, tokens = _int(event.get("step")), _int(event.get("tokens"))
        if step is not None:
            self.step = step
        if tokens is not None:
            self.tokens = tokens
        kind = event.get("kind")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(self, event, time or 0.0)

    def _on_start(self, event: dict[str, Any], time: float) -> None:
        for name in ("run_name", "spec_hash", "backend", "device", "precision", "resumed_from", "finetune"):
            if name in event:
                setattr(self, name, _text(event[name]))
        for name in ("world_size", "parameters", "trainable_parameters", "total_steps", "total_tokens"):
            if name in event:
                setattr(self, name, _int(event[name]))
        stages = event.get("stages")
        self.stages = [stage for stage in stages if isinstance(stage, dict)] if isinstance(stages, list) else []
        self.start_time, self.start_tokens = time, self.tokens
        self.end_reason = self.error = None
        if self.stages and self.stage_index is None:
            self._set_stage(self.stages[0])
        if self.resumed_from:
            self.note(time, "info", f"resumed from {self.resumed_from} at step {self.step}")
        else:
            self.note(time, "info", f"started {self.run_name or 'run'} on {self.device or '?'}")

    def _on_train(self, event: dict[str, Any], time: float) -> None:
        if self._last_train_time is not None and time > self._last_train_time:
            gap = time - self._last_train_time
            self.train_gap = gap if self.train_gap is None else EMA_WEIGHT * self.train_gap + (1 - EMA_WEIGHT) * gap
        self._last_train_time = time
        loss = _number(event.get("loss"))
        if loss is not None and math.isfinite(loss):
            self.loss_ema = loss if self.loss_ema is None else EMA_WEIGHT * self.loss_ema + (1 - EMA_WEIGHT) * loss
        self.loss = loss
        self.lr = _number(event.get("lr"))
        self.grad_norm = _number(event.get("grad_norm"))
        self.tokens_per_s = _number(event.get("tokens_per_s"))
        self.step_time = _number(event.get("step_time"))
        self.mfu = _number(event.get("mfu"))
        self.memory = _int(event.get("memory"))
        skipped = _int(event.get("skipped"))
        if skipped is not None:
            self.skipped = (self.skipped or 0) + max(0, skipped)
        self.train_loss.add(self.tokens, loss)
        self.lr_series.add(self.tokens, self.lr)
        self.tokens_per_s_series.add(self.tokens, self.tokens_per_s)

    def _on_routing(self, event: dict[str, Any], time: float) -> None:
        self.balance_loss = _number(event.get("balance_loss"))
        self.expert_imbalance = _number(event.get("imbalance"))
        load = event.get("load")
        rows = load if isinstance(load, list) and all(isinstance(row, list) for row in load) else None
        self.expert_load = [[_number(x) or 0.0 for x in row] for row in rows] if rows is not None else None

    def _on_eval(self, event: dict[str, Any], time: float) -> None:
        self.val_loss = _number(event.get("val_loss"))
        self.val_ppl = _number(event.get("val_ppl"))
        self.best_val_loss = _number(event.get("best_val_loss"))
        self.val_loss_series.add(self.tokens, self.val_loss)
        if self.val_loss is not None:
            best = f" (best {self.best_val_loss:.4g})" if self.best_val_loss is not None else ""
            self.note(time, "info", f"eval at step {self.step}: val_loss {self.val_loss:.4g}{best}")

    def _on_stage(self, event: dict[str, Any], time: float) -> None:
        self._set_stage(event)
        mix = ", ".join(f"{name} {weight:.2f}" for name, weight in (self.mix or {}).items())
        self.note(time, "info", f"stage {self.stage_label}: seq_len {self.seq_len}" + (f", mix {mix}" if mix else ""))

    def _on_checkpoint(self, event: dict[str, Any], time: float) -> None:
        self.last_checkpoint = _text(event.get("path"))
        if event.get("best"):
            self.best_checkpoint = self.last_checkpoint
        self.note(time, "info", f"checkpoint {self.last_checkpoint}" + (" (best)" if event.get("best") else ""))

    def _on_sample(self, event: dict[str, Any], time: float) -> None:
        self.sample_prompt = _text(event.get("prompt"))
        self.sample_text = _text(event.get("text"))

    def _on_log(self, event: dict[str, Any], time: float) -> None:
        self.note(time, str(event.get("level") or "info"), str(event.get("message") or ""))

    def _on_end(self, event: dict[str, Any], time: float) -> None:
        self.end_reason = str(event.get("reason") or "finished")
        self.error = _text(event.get("error"))
        level = "error" if self.end_reason == "failed" else "info"
        self.note(time, level, f"run {self.end_reason}" + (f": {self.error}" if self.error else ""))

    def process_exited(self, code: int, time: float, log_path: str | None = None) -> None:
        """The training process exited (reported by the launcher). Without an `end` event, a
        SIGTERM/SIGINT exit means it was stopped, any other non-zero code that it failed before it could say so."""
        if self.end_reason is not None:
            return
        where = f" (see {log_path})" if log_path else ""
        if code == 0:
            self.end_reason = "finished"
            self.note(time, "info", "training process exited")
        elif stop_signal(code):
            self.end_reason = "stopped"
            self.note(time, "info", f"training process ended by {stop_signal(code)}")
        else:
            self.end_reason = "failed"
            self.error = f"training process exited with code {code}{where}"
            self.note(time, "error", self.error)

    def _set_stage(self, stage: dict[str, Any]) -> None:
        self.stage_index = _int(stage.get("index"))
        self.seq_len = _int(stage.get("seq_len")) or self.seq_len
        mix = stage.get("mix")
        if isinstance(mix, dict):
            weights = {str(name): _number(weight) for name, weight in mix.items()}
            self.mix = {name: weight for name, weight in weights.items() if weight is not None} or self.mix

    def output_line(self, line: str | None) -> None:
        """The launched training's latest output line, before its first event (the run folder, and so its
        events, exist only once the data is prepared): shown as it is, and as progress when it reports some."""
        self.preparing = line.strip()[-120:] if line else None
        self.prepare = parse_prepare_line(line) if line else None

    def note(self, time: float, level: str, text: str) -> None:
        """Add a line to the log pane (also used for what the dashboard itself did)."""
        self.log.append(LogLine(time, level, text))
        self.log_total += 1

    # ------------------------------------------------------------ derived views

    @property
    def stage_label(self) -> str:
        if self.stage_index is None:
            return "-"
        return f"{self.stage_index + 1}/{len(self.stages)}" if self.stages else str(self.stage_index + 1)

    def status(self, now: float) -> tuple[str, str]:
        """(status, detail): status is waiting, preparing data, running, stale, unreadable, finished, stopped or failed."""
        if self.end_reason is not None:
            return self.end_reason, self.error or ""
        if self.events_problem is not None:
            return "unreadable", self.events_problem
        if self.last_time is None:
            if self.prepare is not None:  # the progress bar shows how far
                return "preparing data", ""
            return "waiting", self.preparing or ("starting" if self.alive else "no events yet")
        silent = now - self.last_time
        if silent > max(STALE_AFTER_S, 5 * (self.train_gap or 0.0)):
            detail = f"no new events for {format_duration(silent)}"
            return ("running", detail) if self.alive else ("stale", detail)
        return "running", ""

    def fraction_prepared(self) -> float | None:
        """Between 0 and 1 while the data is prepared and the step says how much there is, else None."""
        if self.prepare is None or self.last_time is not None:
            return None
        _, done, total = self.prepare
        return min(1.0, done / total) if total else None

    def fraction_done(self) -> float | None:
        """Between 0 and 1, or None without a budget (a budget of 0 or less is none)."""
        if self.total_tokens is not None and self.total_tokens > 0:
            return min(1.0, max(0.0, self.tokens / self.total_tokens))
        if self.total_steps is not None and self.total_steps > 0:
            return min(1.0, max(0.0, self.step / self.total_steps))
        return None

    def elapsed(self, now: float) -> float | None:
        """Seconds since the (latest) start; a run that ended or went silent stops its clock at its last event."""
        if self.start_time is None:
            return None
        status, _ = self.status(now)
        until = max(now, self.last_time or now) if status == "running" else (self.last_time or self.start_time)
        return max(0.0, until - self.start_time)

    def eta(self, now: float) -> float | None:
        """Seconds left at the average rate since the start (evaluations and checkpoints included)."""
        if self.end_reason is not None or not self.total_tokens or self.start_time is None or self.last_time is None:
            return None
        done = self.tokens - self.start_tokens
        spent = self.last_time - self.start_time
        if done <= 0 or spent <= 0:
            return None
        return max(0.0, (self.total_tokens - self.tokens) * spent / done)

    @property
    def perplexity(self) -> float | None:
        if self.loss_ema is None or self.loss_ema > 50:
            return None
        return math.exp(self.loss_ema)


# each event kind of docs/interfaces.md and what folds it in; other kinds are ignored
_HANDLERS = {
    "start": RunState._on_start,
    "train": RunState._on_train,
    "routing": RunState._on_routing,
    "eval": RunState._on_eval,
    "stage": RunState._on_stage,
    "checkpoint": RunState._on_checkpoint,
    "sample": RunState._on_sample,
    "log": RunState._on_log,
    "end": RunState._on_end,
}


def stop_signal(code: int | None) -> str | None:
    """'SIGTERM' or 'SIGINT' when a process's exit code says it ended on one (a stop: killed by it
    before it set up its handler, -15, or stopped by its handler, 143 as the runtime exits), else None."""
    return {-15: "SIGTERM", 143: "SIGTERM", -2: "SIGINT", 130: "SIGINT"}.get(code) if code is not None else None


INT_LIMIT = 2**63  # JSON integers are unbounded; a count past a 64-bit one is not from a run


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if abs(value) < INT_LIMIT else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else str(value)
