"""The compile cache a run uses, and what torch.compile did during it: compilations counted and timed.

    use_compile_cache(plan.compile)      before the model compiles: inductor's caches go to the tabula cache
    watch = CompileWatch(plan.compile)   counts dynamo's compilations from now on (this process)
    report = watch.poll()                the compilations since the last poll, or None
    CompileLog(plan.compile, name, run, log)   the loop's side: logs each poll, marks the cache warm,
                                         records the decision and totals in manifest.json

A compilation is one of dynamo's compile events (a frame traced and compiled, or a backward compiled
when it first runs); a recompilation is a frame compiled again because its guards failed (a new shape
without dynamic shapes, no-grad evaluation, a sliding window that starts to mask). The loop logs each
report, so the dashboard shows them; a stage change with dynamic shapes should report none.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tabula.compiler.compile_plan import CompileDecision


def use_compile_cache(decision: CompileDecision) -> Path | None:
    """Point inductor's persistent caches (FX graph cache, AOTAutograd cache, kernels) at the decision's
    folder in the tabula cache, when the model compiles and the plan named one; returns the folder (None:
    torch's default place). Must run before the first compile of the process; compile workers inherit it.
    A folder that cannot be created leaves torch's default in place."""
    if not decision.enabled or decision.cache_dir is None:
        return None
    folder = Path(decision.cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def eager_unless(compiled: bool) -> contextlib.AbstractContextManager:
    """A context in which compiled regions run their eager code (torch.compiler's force_eager stance),
    unless `compiled`: the plan's choice for evaluation, always for sampling."""
    if compiled:
        return contextlib.nullcontext()
    import torch

    return torch.compiler.set_stance("force_eager")


@dataclass(frozen=True)
class CompileReport:
    """What torch.compile did between two polls."""

    compiles: int  # frames compiled (first compilations and recompilations)
    recompiles: int  # of those, frames compiled again
    backward: int  # backward graphs compiled when first run
    seconds: float  # wall time inside compilation
    cache_hits: int  # FX graph cache hits (graphs loaded instead of compiled)
    cache_misses: int

    def message(self, where: str) -> str:
        """One log line: `torch.compile: 2 graphs (1 recompiled) and 1 backward in 31.2 s at step 1 (cache: 0 hits, 3 misses)`."""
        graphs = f"{self.compiles} graph{'s' if self.compiles != 1 else ''}"
        if self.recompiles:
            graphs += f" ({self.recompiles} recompiled)"
        if self.backward:
            graphs += f" and {self.backward} backward"
        cache = f"cache: {self.cache_hits} hit{'s' if self.cache_hits != 1 else ''}, {self.cache_misses} miss{'es' if self.cache_misses != 1 else ''}"
        return f"torch.compile: {graphs} in {self.seconds:.1f} s {where} ({cache})"


class CompileWatch:
    """Counts this process's torch.compile compilations from its creation (dynamo's compile callbacks and
    inductor's cache counters). `close()` unregisters it."""

    def __init__(self) -> None:
        from torch._dynamo.callback import callback_handler

        self._lock = threading.Lock()
        self._handler = callback_handler
        self._started: float | None = None
        self._pending = {"compiles": 0, "recompiles": 0, "backward": 0, "seconds": 0.0}
        self.totals = {"compiles": 0, "recompiles": 0, "backward": 0, "seconds": 0.0, "cache_hits": 0, "cache_misses": 0}
        self._hits, self._misses = self._cache_counts()
        callback_handler.register_start_callback(self._on_start)
        callback_handler.register_end_callback(self._on_end)

    def _on_start(self, args) -> None:
        self._started = time.perf_counter()

    def _on_end(self, args) -> None:
        with self._lock:
            if self._started is not None:
                self._pending["seconds"] += time.perf_counter() - self._started
                self._started = None
            if args.callback_trigger.name == "LAZY_BACKWARD":
                self._pending["backward"] += 1
                return
            self._pending["compiles"] += 1
            if _recompiled(args.compile_id):
                self._pending["recompiles"] += 1

    @staticmethod
    def _cache_counts() -> tuple[int, int]:
        from torch._dynamo.utils import counters

        return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]

    def poll(self) -> CompileReport | None:
        """The compilations since the last poll (None when there were none)."""
        with self._lock:
            pending = dict(self._pending)
            if not pending["compiles"] and not pending["backward"]:
                return None
            self._pending = {"compiles": 0, "recompiles": 0, "backward": 0, "seconds": 0.0}
        hits, misses = self._cache_counts()
        report = CompileReport(int(pending["compiles"]), int(pending["recompiles"]), int(pending["backward"]), pending["seconds"],
                               hits - self._hits, misses - self._misses)
        self._hits, self._misses = hits, misses
        for name in ("compiles", "recompiles", "backward", "seconds", "cache_hits", "cache_misses"):
            self.totals[name] += getattr(report, name)
        return report

    def close(self) -> None:
        for remove, callback in ((self._handler.remove_start_callback, self._on_start),
                                 (self._handler.remove_end_callback, self._on_end)):
            try:
                remove(callback)
            except ValueError:
                pass


def _recompiled(compile_id: str) -> bool:
    """Whether dynamo's compile id (`frame/attempt`, `0/1`, `[0/1_2]`) is a frame compiled again."""
    try:
        frame_compile = compile_id.strip("[]").split("/")[1]
        return int(frame_compile.split("_")[0]) > 0
    except (IndexError, ValueError):
        return False


class CompileLog:
    """A run's compile bookkeeping, for the train loop: the decision recorded in manifest.json (`run`: rank
    0's run folder, None on other ranks), each poll's compilations logged through `log(level, message)`
    (a recompile during training steps as a warning: with dynamic shapes a stage change compiles nothing),
    the model marked warm in the compile cache, and at `close()` the totals added to the manifest.
    Every rank polls (the counters are per process); only rank 0 writes."""

    def __init__(self, decision: CompileDecision, name: str, run, log) -> None:
        self.decision, self.name, self.run, self._log = decision, name, run, log
        self.watch = CompileWatch() if decision.enabled else None

    def note(self, where: str, *, training: bool = True) -> None:
        report = self.watch.poll() if self.watch is not None else None
        if report is None or self.run is None:
            return
        self._log("warning" if report.recompiles and training else "info", report.message(where))
        self._mark_warm()

    def record(self, **observed) -> None:
        """The decision (and `observed`) in manifest.json; a manifest that cannot be rewritten only loses it
        (the start event carries the decision too)."""
        if self.run is None:
            return
        try:
            self.run.update_manifest(compile={**self.decision.as_dict(), **observed})
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self.watch is None:
            return
        self.watch.close()
        self.record(observed={name: round(value, 1) for name, value in self.watch.totals.items()})

    def _mark_warm(self) -> None:
        """Mark the model's graphs as kept in the persistent cache (the next plan sees a warm cache), with
        what compiling them cost; a cache folder that refuses the write only loses the mark."""
        decision = self.decision
        if decision.cache_root is None or decision.cache_key is None or self.watch is None:
            return
        from tabula.compiler.compile_cache import record_entry

        totals = self.watch.totals
        try:
            record_entry(decision.cache_root, decision.cache_key, name=self.name, mode=decision.mode, scope=decision.scope,
                         dynamic_shapes=decision.dynamic_shapes, graphs=totals["compiles"], seconds=round(totals["seconds"], 1))
        except OSError:
            pass
