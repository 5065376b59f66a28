"""The runtime's overhead: a full `tabula run` step against a plain PyTorch loop, same invocation.

Both train the quickstart model (seq_len 128, 4096 tokens a step) with the same AdamW groups, learning
rates, gradient clipping and the very same batches (drawn beforehand from tabula's sampler for the
plain loop), so they compute the same losses (printed as a check). tabula's side is the real loop:
sampler, schedule, events.jsonl, control polling, the read of the loss, MFU and memory (logged every
step); evaluation and periodic checkpoints are off so that both sides do the same work.

The two loops run in one process, step by step in turn: an event listener of tabula's loop (where the
console would be) runs the plain loop's step k as soon as tabula's step k has written its train event,
so both meet the same machine state. A step's time runs from the end of the other side's step before it
to the end of its own, everything included (tabula's: sampler, schedule, events, control polling and the
loss read; the plain loop's: its loss read), the first WARMUP steps left out; on two clocks: the
process's CPU time, which other processes on a shared machine barely move (the figure), and wall time.
The ratio is the median over a round of tabula's step k against the plain step k on the same batch;
ROUNDS rounds (fresh models each) give its spread. The loop's overhead cannot be negative: a ratio below
1 is the noise.

    python bench/bench_runtime.py          (or: make bench)
    BENCH_THREADS=2 BENCH_ROUNDS=6 python bench/bench_runtime.py

Torch runs on one thread here unless BENCH_THREADS says otherwise: on a shared 2-core machine two
OpenMP threads per process make every timing swing several-fold, one thread keeps the comparison
stable (and, the step being slower, understates the loop's relative overhead by at most 2x).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12  # timed steps a run
WARMUP = 3
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
OVERRIDES = [
    "data.curriculum=[{seq_len: 128}]",
    "train.batch_tokens=4k",
    "train.budget.tokens=1M",  # far beyond the steps run: the schedule is the same for every run
    "train.eval=null",
    "train.checkpoint.every_tokens=null",
    "train.log.every_steps=1",
    "track.aim.enabled=false",
]


def _setup():
    import torch

    from tabula.compiler import make_plan
    from tabula.runtime.data import prepare
    from tabula.schemas.loader import load_spec

    spec = load_spec(ROOT / "specs" / "quickstart.yaml", OVERRIDES)
    prepared = prepare(spec)
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu")
    return spec, prepared, plan, torch.device("cpu")


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class PlainLoop:
    """A plain PyTorch loop over the same module (built afresh), optimizer, learning rates and batches as
    tabula's loop: `step(k)` trains on batch k and returns its loss."""

    def __init__(self, spec, prepared, plan, device, steps: int) -> None:
        from tabula.compiler import build_model
        from tabula.runtime.data import Sampler
        from tabula.runtime.optimizers import build_optimizer
        from tabula.runtime.schedules import lr_at

        self.stage = stage = plan.stages[0]
        sampler = Sampler(prepared, plan.stages, spec.seed)
        self.batches = [sampler.next_batch(stage.sequences_per_step, stage.seq_len) for _ in range(steps)]
        self.lrs = [lr_at(spec.train.schedule, spec.train.optimizer.lr, (k + 1) * plan.batch_tokens, plan.budget_tokens,
                          plan.warmup_tokens) for k in range(steps)]
        self.model = build_model(spec, vocab_size=plan.vocab_size)
        self.model.materialize(device, spec.seed)
        self.optimizer = build_optimizer(spec.train.optimizer, self.model, device)
        self.grad_clip = spec.train.grad_clip

    def step(self, k: int) -> float:
        import torch

        stage, batch, micro = self.stage, self.batches[k], self.stage.micro_batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[k] * group.get("lr_scale", 1.0)
        total = torch.zeros(())
        for lo in range(0, stage.sequences_per_step, micro):
            docs = None if batch.document_ids is None else batch.document_ids[lo:lo + micro]
            _, loss = self.model(batch.input_ids[lo:lo + micro], batch.targets[lo:lo + micro], document_ids=docs)
            (loss / stage.grad_accum).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (total / stage.grad_accum).item()


def one_round(spec, prepared, plan, device) -> dict:
    """tabula's loop for WARMUP + STEPS steps with the plain loop's step k run right after tabula's step k
    (by an event listener, where the console would be): the two alternate step by step on one machine
    state. Returns each side's timed steps as (wall, CPU) seconds and its losses."""
    from tabula.runtime.events import read_events
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import RunDir
    from tabula.runtime.build import build_local_engine

    plain = PlainLoop(spec, prepared, plan, device, WARMUP + STEPS)
    times = {"tabula": [], "plain": []}
    plain_losses = []
    since = [None]  # the clocks when the plain step before this tabula step ended

    def listener(event: dict) -> None:
        if event["kind"] != "train":
            return
        ended = _clocks()
        k = len(plain_losses)
        if k >= WARMUP:
            times["tabula"].append(tuple(b - a for a, b in zip(since[0], ended)))
        plain_losses.append(plain.step(k))
        since[0] = _clocks()
        if k >= WARMUP:
            times["plain"].append(tuple(b - a for a, b in zip(ended, since[0])))

    with tempfile.TemporaryDirectory() as folder:
        run = RunDir(Path(folder))
        run.write_manifest({})
        engine = build_local_engine(spec, plan, device)
        train(spec, plan, engine, run, prepared, spec_hash="bench", max_steps=WARMUP + STEPS, console=listener)
        losses = [e["loss"] for e in read_events(run.events) if e["kind"] == "train"]
    return {"times": times, "losses": {"tabula": losses, "plain": plain_losses}}


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    spec, prepared, plan, device = _setup()
    stage = plan.stages[0]
    print(f"   quickstart model, {stage.sequences_per_step} x {stage.seq_len} tokens a step "
          f"(micro-batch {stage.micro_batch} x {stage.grad_accum}), {ROUNDS} rounds of {STEPS} timed steps a side "
          f"after {WARMUP} warm-up steps, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f}")
    rounds = [one_round(spec, prepared, plan, device) for _ in range(ROUNDS)]
    for clock, what in ((1, "CPU time"), (0, "wall time")):
        print(f"   {what}:")
        for name, label in (("tabula", "tabula run loop"), ("plain", "plain PyTorch  ")):
            medians = [statistics.median(t[clock] for t in r["times"][name]) for r in rounds]
            pooled = statistics.median(t[clock] for r in rounds for t in r["times"][name])
            print(f"     {label} : {pooled * 1000:8.1f} ms/step  (median a round: {', '.join(f'{m * 1000:.0f}' for m in medians)})")
    worst = max(abs(a - b) for r in rounds for a, b in zip(r["losses"]["tabula"], r["losses"]["plain"]))
    print(f"   same work        : the two sides' losses differ by at most {worst:.1e}")
    for clock, what in ((1, "CPU time "), (0, "wall time")):
        # step by step: tabula's step k against the plain step k right after it, on the same batch
        ratios = [statistics.median(t[clock] / p[clock] for t, p in zip(r["times"]["tabula"], r["times"]["plain"]))
                  for r in rounds]
        print(f"   overhead ({what}): {statistics.median(ratios):6.3f}  (rounds {min(ratios):.3f} to {max(ratios):.3f})")
    print(f"   target < 1.03; CPU time is the figure (other processes on a shared machine move wall time); "
          f"load now {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
