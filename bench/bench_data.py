"""Data pipeline throughput: prepare (tokens/s, cold and cached) and the sampler's next_batch
(tokens/s), the latter as a ratio to what the quickstart model consumes in training (a few
fwd+bwd+AdamW steps of it measured in the same run). Target: the loader >= 20x the model.

    python bench/bench_data.py [MAX_FILES]     (default 400 stdlib files; 0 = the whole quickstart corpus)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _model_tokens_per_s(spec, vocab_size: int, micro_batch: int, seq_len: int, steps: int = 2) -> tuple[float, str]:
    from tabula.compiler import build_model

    model = build_model(spec, vocab_size=vocab_size).materialize("cpu", spec.seed)
    what = "tabula.compiler.build_model (quickstart, eager fp32)"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab_size, (micro_batch, seq_len + 1))

    def step():
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * micro_batch * seq_len / (time.perf_counter() - started), what


def main(max_files: int = 400) -> None:
    from tabula.compiler import make_plan
    from tabula.runtime.data import Sampler, prepare
    from tabula.schemas.loader import load_spec

    overrides = [f"data.sources.stdlib.max_files={max_files}"] if max_files else []
    spec = load_spec(ROOT / "specs" / "quickstart.yaml", overrides)
    with tempfile.TemporaryDirectory() as cache:
        cold = prepare(spec, cache_dir=cache)
        warm = prepare(spec, cache_dir=cache)
        tokens = sum(s["tokens"] for s in cold.report["sources"].values())
        cold_s, warm_s = cold.report["seconds"], warm.report["seconds"]
        print(f"   corpus: stdlib, {max_files or 'all'} files, {tokens:,} tokens; phases {cold.report['build_seconds']}")
        print(f"   prepare cold   {cold_s:8.2f} s  {tokens / cold_s:12,.0f} tokens/s")
        print(f"   prepare cached {warm_s:8.3f} s  ({cold_s / warm_s:.0f}x faster than cold)")

        plan = make_plan(spec, vocab_size=cold.vocab_size)
        stage = plan.stages[-1]
        sampler = Sampler(cold, plan.stages, spec.seed)
        sampler.load_state_dict({**sampler.state_dict(), "tokens": stage.start_tokens})
        n_batches, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            sampler.next_batch(stage.micro_batch, stage.seq_len)
            n_batches += 1
        loader = n_batches * stage.micro_batch * stage.seq_len / (time.perf_counter() - started)
        model, what = _model_tokens_per_s(spec, cold.vocab_size, stage.micro_batch, stage.seq_len)
        print(f"   loader next_batch({stage.micro_batch}, {stage.seq_len})  {loader:12,.0f} tokens/s")
        print(f"   model training step        {model:12,.0f} tokens/s  [{what}, {torch.get_num_threads()} threads]")
        print(f"   loader / model             {loader / model:12.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
