"""What goes wrong during a run, and what the run does about it.

- SIGINT / SIGTERM: the first finishes the current step, writes a checkpoint and ends the run as
  `stopped`; a second SIGINT interrupts at once (no checkpoint).
- Non-finite loss or gradients: the engine never applies such an update; the loop then follows
  `train.on_nonfinite` (skip the batch, stop at the last good checkpoint, or roll back to it).
- CUDA out of memory: a message naming the micro-batch and pointing at `tabula plan`.

Tests plant non-finite losses from the outside (tests/planted_nan.py wraps the engine's methods): the
loop carries no test hook.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request (`received`, the signal number); a second SIGINT
    raises KeyboardInterrupt. Installed only in the main thread; restores the old handlers on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None


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
