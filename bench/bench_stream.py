"""Streaming loader throughput (`cache: false`): tokens/s of the sampler over a streamed source (its
stream loader's worker processes reading jsonl through `datasets`, filtering, tokenizing, packing)
against the cached sampler over the same documents and against what the quickstart model consumes in
training (fwd+bwd+AdamW, measured in the same run). Target: the streamed loader >= 20x the model.

    python bench/bench_stream.py [MAX_FILES] [WORKERS]   (default 400 stdlib files, 2 workers)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 3.0


def _rate(next_batch, stage) -> float:
    next_batch()  # warm-up: the workers start, the first chunks arrive
    n_batches, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        next_batch()
        n_batches += 1
    return n_batches * stage.micro_batch * stage.seq_len / (time.perf_counter() - started)


def main(max_files: int = 400, workers: int = 2) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import _model_tokens_per_s

    from tabula.compiler import make_plan
    from tabula.runtime.data import Sampler, prepare
    from tabula.runtime.data.sources import StdlibReader
    from tabula.runtime.data.streaming import StreamPlan, StreamSource
    from tabula.schemas.loader import load_spec

    spec = load_spec(ROOT / "specs" / "quickstart.yaml", [f"data.sources.stdlib.max_files={max_files}"])
    with tempfile.TemporaryDirectory() as folder:
        cached = prepare(spec, cache_dir=Path(folder) / "cache")
        # the same documents as jsonl files, streamed with the same tokenizer and filters
        reader = StdlibReader("stdlib", spec.data.sources["stdlib"], ROOT)
        files, lines = [], [json.dumps({"text": text}) for text in reader.documents(lambda message: None)]
        for index in range(8):
            path = Path(folder) / f"part{index}.jsonl"
            path.write_text("\n".join(lines[index::8]) + "\n")
            files.append(str(path))
        plan = make_plan(spec, vocab_size=cached.vocab_size)
        stage = plan.stages[-1]
        source = StreamSource("web", "files", files=tuple(files))
        streams = StreamPlan({"web": source}, ("web",), tuple(spec.data.filters), (), spec.seed, workers, cached.tokenizer_json, cached.eos_id)
        streamed = dataclasses.replace(cached, train={}, val={}, streams=streams)
        print(f"   corpus: stdlib, {max_files} files, {len(lines):,} documents in 8 jsonl files; {workers} stream workers, "
              f"next_batch({stage.micro_batch}, {stage.seq_len})")

        sampler = Sampler(cached, plan.stages, spec.seed)
        sampler.load_state_dict({**sampler.state_dict(), "tokens": stage.start_tokens})
        cached_rate = _rate(lambda: sampler.next_batch(stage.micro_batch, stage.seq_len), stage)
        stream_sampler = Sampler(streamed, [dataclasses.replace(s, mix={"web": 1.0}) for s in plan.stages], spec.seed)
        try:
            stream_rate = _rate(lambda: stream_sampler.next_batch(stage.micro_batch, stage.seq_len), stage)
        finally:
            stream_sampler.close()
        model, what = _model_tokens_per_s(spec, cached.vocab_size, stage.micro_batch, stage.seq_len)
    print(f"   cached sampler             {cached_rate:12,.0f} tokens/s")
    print(f"   streamed sampler           {stream_rate:12,.0f} tokens/s")
    print(f"   model training step        {model:12,.0f} tokens/s  [{what}, {torch.get_num_threads()} threads]")
    print(f"   streamed / cached          {stream_rate / cached_rate:12.3f}x")
    print(f"   streamed / model           {stream_rate / model:12.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
