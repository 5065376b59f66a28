"""Memory measured, beside the plan's estimate: two training steps of the spec's model on a device, at the
stage with the most activations (its micro-batch and sequence length), on random token ids (no data is
prepared). The second step is the one measured: the optimizer's state exists by then, as in training.

CUDA: the allocator's peak (`torch.cuda.max_memory_allocated`) above what was allocated before the model.
CPU: the process's resident memory, sampled every millisecond by a thread, its peak above the resident
memory before the model was built (large tensors are mapped and unmapped whole, so resident memory follows
them closely; the allocator's caches and the interpreter's own growth make it a little high)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tabula.compiler.plan import Plan
    from tabula.schemas.spec import Spec


@dataclass(frozen=True)
class Measured:
    device: str
    method: str
    peak_bytes: int  # above the baseline before the model existed
    seq_len: int
    micro_batch: int
    step_seconds: float


def measure_step(spec: Spec, plan: Plan, device: str) -> Measured:
    """Build the training model and optimizer on `device` (runtime/build.py, as a run does) and measure
    the memory of its second full step (grad_accum micro-batches and the update). Eager, whatever the plan
    decided about compiling: a compilation's own memory and minutes are not the step's."""
    from dataclasses import replace

    import torch

    plan = replace(plan, compile=replace(plan.compile, enabled=False, reason="measured eager"))

    from tabula.runtime.build import build_local_engine

    target = torch.device(device)
    stage = max(plan.stages, key=lambda s: s.micro_batch * s.seq_len)
    generator = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(0, plan.vocab_size, (stage.micro_batch, stage.seq_len + 1), generator=generator)
    cuda = target.type == "cuda"
    if cuda:
        torch.cuda.synchronize(target)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(target)
        torch.cuda.reset_peak_memory_stats(target)
        sampler = None
    else:
        sampler = _RssSampler()
        base = sampler.start()
    engine = build_local_engine(spec, plan, target)

    def step() -> None:
        for _ in range(stage.grad_accum):
            engine.forward_backward(ids[:, :-1], ids[:, 1:], None, stage.grad_accum)
        engine.step(1e-4)

    step()
    started = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize(target)
    seconds = time.perf_counter() - started
    if cuda:
        peak, method = torch.cuda.max_memory_allocated(target) - base, "torch.cuda.max_memory_allocated"
    else:
        assert sampler is not None
        peak, method = sampler.stop() - base, "resident memory (sampled)"
    del engine
    return Measured(device=str(target), method=method, peak_bytes=int(peak), seq_len=stage.seq_len,
                    micro_batch=stage.micro_batch, step_seconds=seconds)


class _RssSampler:
    """The process's resident memory, polled by a thread."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tabula-rss", daemon=True)

    def start(self) -> int:
        now = rss_bytes()
        self.peak = now
        self._thread.start()
        return now

    def stop(self) -> int:
        self.peak = max(self.peak, rss_bytes())
        self._stop.set()
        self._thread.join()
        return self.peak

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)


def rss_bytes() -> int:
    """Resident memory of this process (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
