"""Learning-rate schedules by `kind`, all driven by training tokens seen (never by steps).

Each schedule is a pure function of where the run is in its token budget, so a resumed run, a changed
batch size or a curriculum stage change never shifts it. Warmup is linear from 0 over `warmup_tokens`.
"""

from __future__ import annotations

import math
from typing import Callable

from tabula.schemas.registry import Registry
from tabula.schemas.train import WSD, Constant, Cosine, Linear

# kind -> (schedule spec, progress after warmup in [0, 1], tokens, total_tokens) -> multiplier of the peak lr
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")


@SCHEDULES.register("cosine")
def _cosine(spec: Cosine, progress: float, tokens: int, total_tokens: int) -> float:
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("linear")
def _linear(spec: Linear, progress: float, tokens: int, total_tokens: int) -> float:
    return 1.0 - (1.0 - spec.min_lr_ratio) * progress


@SCHEDULES.register("constant")
def _constant(spec: Constant, progress: float, tokens: int, total_tokens: int) -> float:
    return 1.0


@SCHEDULES.register("wsd")
def _wsd(spec: WSD, progress: float, tokens: int, total_tokens: int) -> float:
    decay_start = total_tokens * (1.0 - spec.decay)
    if tokens <= decay_start or spec.decay == 0:
        return 1.0
    p = min(1.0, (tokens - decay_start) / (total_tokens - decay_start))
    shape = {"linear": 1.0 - p, "cosine": 0.5 * (1.0 + math.cos(math.pi * p)), "sqrt": 1.0 - math.sqrt(p)}[spec.decay_shape]
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * shape


def lr_at(schedule_spec, peak_lr: float, tokens: int, total_tokens: int, warmup_tokens: int) -> float:
    """The learning rate after `tokens` training tokens of a `total_tokens` budget.

    Linear warmup from 0 to `peak_lr` over `warmup_tokens`, then the schedule's own shape; past the
    budget the final value holds."""
    if warmup_tokens > 0 and tokens < warmup_tokens:
        return peak_lr * tokens / warmup_tokens
    span = max(1, total_tokens - warmup_tokens)
    progress = min(1.0, max(0.0, (tokens - warmup_tokens) / span))
    return peak_lr * SCHEDULES[schedule_spec.kind](schedule_spec, progress, min(tokens, total_tokens), total_tokens)
