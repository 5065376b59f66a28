"""The runtime's overhead: a full `tabula run` step against a plain PyTorch loop, same invocation.

Both train the quickstart model (seq_len 128, 4096 tokens a step) with the same AdamW groups, the same
gradient clipping and the very same batches (drawn beforehand from tabula's sampler for the plain
loop). tabula's side is the real loop: sampler, schedule, events.jsonl, control polling, the read of
the loss, MFU and memory (logged every step here, which costs nothing on a CPU); evaluation and
periodic checkpoints are off so that both sides do the same work. Each side's figure is the median of
its per-step times (tabula's from its own train events), which a busy machine's bursts move little;
runs alternate (tabula, plain, tabula, plain ...) and the best median of each side is compared.

    python bench/bench_runtime.py          (or: make bench)
    BENCH_THREADS=2 python bench/bench_runtime.py

Torch runs on one thread here unless BENCH_THREADS says otherwise: on a shared 2-core machine two
OpenMP threads per process make every timing swing several-fold, one thread keeps the comparison
stable (and, the step being slower, understates the loop's relative overhead by at most 2x).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
WARMUP = 3
REPEATS = 3
OVERRIDES = [
    "data.curriculum=[{seq_len: 128}]",
    "train.batch_tokens=4k",
    "train.budget.tokens=76k",  # WARMUP + STEPS steps of 4096 tokens
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


def tabula_step_time(spec, prepared, plan, device) -> float:
    """Median seconds per step of the real loop (its train events' step_time)."""
    from tabula.runtime.events import read_events
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import RunDir
    from tabula.runtime.session import build_local_engine

    with tempfile.TemporaryDirectory() as folder:
        run = RunDir(Path(folder))
        run.write_manifest({})
        engine = build_local_engine(spec, plan, device)
        train(spec, plan, engine, run, prepared, spec_hash="bench", max_steps=WARMUP + STEPS)
        events = [e for e in read_events(run.events) if e["kind"] == "train"]
    return statistics.median(e["step_time"] for e in events if e["step"] > WARMUP)


def plain_step_time(spec, prepared, plan, device) -> float:
    """Median seconds per step of a plain PyTorch loop over the same module, optimizer and batches."""
    import torch

    from tabula.compiler import build_model
    from tabula.runtime.data import Sampler
    from tabula.runtime.optimizers import param_groups

    stage = plan.stages[0]
    sampler = Sampler(prepared, plan.stages, spec.seed)
    batches = [sampler.next_batch(stage.sequences_per_step, stage.seq_len) for _ in range(WARMUP + STEPS)]
    model = build_model(spec, vocab_size=plan.vocab_size)
    model.materialize(device, spec.seed)
    opt = spec.train.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, foreach=True)
    micro = stage.micro_batch
    times = []
    for batch in batches:
        started = time.perf_counter()
        for lo in range(0, stage.sequences_per_step, micro):
            _, loss = model(batch.input_ids[lo:lo + micro], batch.targets[lo:lo + micro])
            (loss / stage.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - started)
    return statistics.median(times[WARMUP:])


def main() -> None:
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    spec, prepared, plan, device = _setup()
    stage = plan.stages[0]
    print(f"   quickstart model, {stage.sequences_per_step} x {stage.seq_len} tokens a step "
          f"(micro-batch {stage.micro_batch} x {stage.grad_accum}), {STEPS} timed steps, {torch.get_num_threads()} threads")
    tabula_times, plain_times = [], []
    for _ in range(REPEATS):
        tabula_times.append(tabula_step_time(spec, prepared, plan, device))
        plain_times.append(plain_step_time(spec, prepared, plan, device))
    best_tabula, best_plain = min(tabula_times), min(plain_times)
    print(f"   tabula run loop : {best_tabula * 1000:8.1f} ms/step  (runs: {', '.join(f'{t * 1000:.0f}' for t in tabula_times)})")
    print(f"   plain PyTorch   : {best_plain * 1000:8.1f} ms/step  (runs: {', '.join(f'{t * 1000:.0f}' for t in plain_times)})")
    print(f"   overhead ratio  : {best_tabula / best_plain:8.3f}  (target < 1.03)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
