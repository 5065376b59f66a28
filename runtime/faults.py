"""What goes wrong during a run, and what the run does about it.

- SIGINT / SIGTERM: the first finishes the current step, writes a checkpoint and ends the run as
  `stopped`; a second SIGINT interrupts at once (no checkpoint).
- Non-finite loss or gradients: the engine never applies such an update; the loop then follows
  `train.on_nonfinite` (skip the batch, stop at the last good checkpoint, or roll back to it).
- CUDA out of memory: a message naming the micro-batch and pointing at `tabula plan`.
- A test-only hook plants a NaN: TABULA_TEST_NAN_AT_STEP=N poisons the loss of step N once (read here
  and only here; the hot path never sees it unless set).
"""

from __future__ import annotations

import os
import signal
import threading

import torch

NAN_ENV = "TABULA_TEST_NAN_AT_STEP"


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request (`received`, the signal number); a second SIGINT
    raises KeyboardInterrupt. Installed only in the main thread; restores the old handlers on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None


def planted_nan_step() -> int | None:
    """The step (1-based) whose loss the test hook poisons, or None (the normal case)."""
    value = os.environ.get(NAN_ENV)
    return int(value) if value else None


def plant_nan(model: torch.nn.Module) -> None:
    """Make the model's next forward return a NaN loss (once)."""

    def hook(module, args, output):
        handle.remove()
        if isinstance(output, tuple):
            logits, loss = output
            return logits, loss * float("nan")
        return output * float("nan")

    handle = model.register_forward_hook(hook)


def oom_message(error: BaseException, *, micro_batch: int, seq_len: int, spec_path: str | None) -> str:
    """What to tell the user when the device runs out of memory."""
    smaller = max(1, micro_batch // 2)
    plan = f"tabula plan {spec_path}" if spec_path else "tabula plan SPEC"
    return (
        f"out of device memory with micro-batch {micro_batch} x seq_len {seq_len}. Try train.micro_batch={smaller}, "
        f"or parallel.activation_checkpointing=full; `{plan}` shows the memory each part needs. ({str(error).splitlines()[0]})"
    )


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or ("out of memory" in str(error).lower() and "CUDA" in str(error))
