"""lm-eval benchmarks at evaluation time during training (`train.eval.benchmarks`): the chosen tasks run
on the model being trained, as it is now, through the same harness as `tabula eval` (harness.py).

The loop calls `TrainingBenchmarks.run(model, device)` after each evaluation and emits the scores as a
`benchmark` event (the Aim and TensorBoard trackers record that event; the dashboard shows it). Kept out
of the loop: lm-eval seeds Python's, NumPy's and torch's generators, so the generators' states are put
back afterwards and the training continues exactly as it would have without the benchmarks (a resumed
run too). A task that cannot be evaluated (unknown, or its data needs a download) turns the benchmarks
off for the rest of the run with one warning, rather than failing the training; so does a missing lm-eval.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

if TYPE_CHECKING:
    from .harness import BenchmarkResults


@contextlib.contextmanager
def generators_kept() -> Iterator[None]:
    """Python's, NumPy's, torch's (and CUDA's) random states as they were on entry, again on exit."""
    py, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class TrainingBenchmarks:
    """`spec` is a `train.eval.benchmarks` section; `base_dir` the spec file's folder (its `include` is
    relative to it); `tokenizer` the run's `tokenizers.Tokenizer` and `eos_id` its end-of-text id."""

    def __init__(self, spec: Any, base_dir: str | Path, tokenizer: Any, eos_id: int | None, *, ranks: int = 1) -> None:
        self.spec = spec
        self.include = [Path(base_dir) / spec.include] if spec is not None and spec.include else []
        self.tokenizer, self.eos_id = tokenizer, eos_id
        self.ranks = ranks
        self.manager: Any = None  # lm-eval's TaskManager, indexed once for the run
        self.off: str | None = None if spec is not None else "none asked"  # why the benchmarks stopped, once they did

    @classmethod
    def for_run(cls, spec: Any, prepared: Any, engine: Any) -> "TrainingBenchmarks":
        """The runner of a training: its spec's `train.eval.benchmarks` (None: a runner that does nothing), on
        rank 0 only (other ranks get one that does nothing)."""
        wanted = spec.train.eval.benchmarks if spec.train.eval is not None and engine.is_main else None
        return cls(wanted, spec.base_dir, prepared.tokenizer, prepared.eos_id, ranks=engine.world_size)

    def run(self, model: torch.nn.Module, device: torch.device | str) -> tuple[BenchmarkResults | None, str | None]:
        """(results, None); or (None, a warning) the first time the tasks cannot run, then (None, None)."""
        if self.off is not None:
            return None, None
        if self.ranks > 1:
            self.off = "train.eval.benchmarks runs in one process only: no benchmarks in this run of several"
            return None, self.off
        try:
            from .harness import BenchmarkError, TabulaLM, evaluate_tasks, manager_for
        except ImportError as error:
            self.off = f"train.eval.benchmarks needs lm-eval ({error}; pip install 'tabula[eval]'): no benchmarks in this run"
            return None, self.off
        was_training = model.training
        try:
            with generators_kept(), torch.no_grad():
                if self.manager is None:
                    self.manager = manager_for(self.spec.tasks, self.include)
                lm = TabulaLM(model, self.tokenizer, eos_id=self.eos_id, batch_size=self.spec.batch_size, device=str(device))
                return evaluate_tasks(lm, self.spec.tasks, include=self.include, limit=self.spec.limit, manager=self.manager), None
        except BenchmarkError as error:
            self.off = f"train.eval.benchmarks: {error}; no benchmarks for the rest of this run"
            return None, self.off
        finally:
            model.train(was_training)
