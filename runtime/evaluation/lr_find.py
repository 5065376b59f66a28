"""The learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's lr_find): train the spec's
model from its fresh initialisation on its own data while the learning rate grows exponentially from
`min_lr` to `max_lr`, one optimizer step per rate, and stop when the loss diverges. Nothing is written to
any run: the model, optimizer and sampler are built here and dropped.

Two suggestions read the smoothed loss curve (exponential moving average, bias-corrected):
- steepest: where the loss falls fastest against log(lr);
- valley (fastai's default): the longest stretch over which the loss keeps falling, taken at a point
  about half-way down it; more robust to a noisy start than the steepest slope. It is the suggestion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tabula.schemas.spec import Spec

DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of the best smoothed loss so far
SMOOTHING = 0.9  # the moving average's beta (fastai uses 0.98 over more steps)


@dataclass(frozen=True)
class RangeTest:
    """What the range test saw and what it suggests. `lrs[i]` was the rate of step i, `losses[i]` its loss."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    stopped: str  # "diverged at <lr>" or "reached the maximum rate"
    steepest: float | None
    valley: float | None
    seq_len: int
    batch_tokens: int

    @property
    def suggestion(self) -> float | None:
        """The rate to train with: the valley rule's, else the steepest slope's."""
        return self.valley if self.valley is not None else self.steepest


def schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The exponential ramp: `steps` rates from `min_lr` to `max_lr`, equally spaced in log(lr)."""
    if steps < 2:
        return [min_lr]
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The bias-corrected exponential moving average of `losses`."""
    average, out = 0.0, []
    for index, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**index))
    return out


def steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr), up to its minimum (the slope after
    the minimum is the divergence). None with fewer than 3 points."""
    end = min(range(len(smoothed)), key=smoothed.__getitem__) + 1 if smoothed else 0
    if end < 3:
        return None
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(1, end - 1)]
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]


def valley(lrs: list[float], smoothed: list[float]) -> float | None:
    """fastai's valley rule: the longest (not necessarily contiguous) decreasing run of the loss, and the
    rate at half of its second third (an index about 1/2 of the way in)."""
    n = len(smoothed)
    if n < 3:
        return None
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end, start = i, i - longest[i]
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def range_test(spec: Spec, *, steps: int = 100, min_lr: float = 1e-7, max_lr: float = 1.0,
               cache_dir: str | Path | None = None, device: str | None = None,
               on_step: Callable[[int, float, float], None] | None = None) -> RangeTest:
    """Run the range test for `spec` (its model, optimizer, data, first curriculum stage) on `device`
    (default: the run's own choice). `on_step(step, lr, loss)` is called after each step. Raises
    DataError for data that cannot be prepared, like `tabula run`."""
    import torch

    from tabula.compiler import make_plan
    from tabula.runtime.build import build_local_engine
    from tabula.runtime.data import Sampler, prepare
    from tabula.runtime.engine import pick_device
    from tabula.runtime.loop import seed_everything

    if not 0 < min_lr < max_lr:
        raise ValueError(f"the range needs 0 < min < max (got {min_lr:g} and {max_lr:g})")
    prepared = prepare(spec, cache_dir=cache_dir)
    target = torch.device(device) if device else pick_device()
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type=target.type, max_steps=steps)
    seed_everything(spec.seed)
    engine = build_local_engine(spec, plan, target)
    sampler = Sampler(prepared, plan.stages, spec.seed)
    stage = plan.stages[0]
    rates = schedule(min_lr, max_lr, steps)
    lrs: list[float] = []
    losses: list[float] = []
    stopped = "reached the maximum rate"
    best = math.inf
    for index, lr in enumerate(rates):
        batch = sampler.next_batch(stage.sequences_per_step, stage.seq_len)
        total = 0.0
        for micro in range(stage.grad_accum):
            lo, hi = micro * stage.micro_batch, (micro + 1) * stage.micro_batch
            documents = batch.document_ids[lo:hi] if batch.document_ids is not None else None
            total += float(engine.forward_backward(batch.input_ids[lo:hi], batch.targets[lo:hi], documents, stage.grad_accum))
        loss = total / stage.grad_accum
        engine.step(lr)
        if not math.isfinite(loss):
            stopped = f"diverged at {lr:.3g} (loss {loss})"
            break
        lrs.append(lr)
        losses.append(loss)
        if on_step is not None:
            on_step(index, lr, loss)
        current = smooth(losses)[-1]
        best = min(best, current)
        if index > 3 and current > DIVERGENCE * best:
            stopped = f"diverged at {lr:.3g} (smoothed loss {current:.3g} > {DIVERGENCE:g} x best {best:.3g})"
            break
    smoothed = smooth(losses)
    return RangeTest(lrs=tuple(lrs), losses=tuple(losses), smoothed=tuple(smoothed), stopped=stopped,
                     steepest=steepest(lrs, smoothed), valley=valley(lrs, smoothed), seq_len=stage.seq_len,
                     batch_tokens=plan.batch_tokens)
