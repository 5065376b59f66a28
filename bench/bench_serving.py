"""The server under load: N concurrent clients (8, 16, 32) on the loopback against serving the same requests
one at a time, same process, same server.

The quickstart model (specs/quickstart.yaml: d_model 256, 4 layers, GQA, vocab 4096; seed-initialised: the
speed does not depend on what the weights learned) behind `tabula serve`'s app and scheduler, uvicorn on a
thread. The requests are a fixed mix: prompts of 16, 64 and 128 tokens, answers of exactly 32, 64 and 96
tokens (greedy; end-of-text does not stop them), the list the same for every concurrency. Printed a line a
concurrency: output tokens/s, time to first token and latency p50/p99, failed requests, and the ratio of
tokens/s to the sequential run's. The goal on a CPU: 16 clients >= 4x sequential, 0 errors.

Then the memory run: BENCH_SERVING_LONG requests (default 1000) at 16 clients, the process's resident memory
read every 100 finished requests: flat means the cache pool and the scheduler give everything back.

    python bench/bench_serving.py            (or: make bench, or python bench/run.py serving)
    BENCH_SERVING_REQUESTS=32 BENCH_SERVING_LONG=0 BENCH_THREADS=2 python bench/bench_serving.py
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = int(os.environ.get("BENCH_SERVING_REQUESTS", "48"))
LONG = int(os.environ.get("BENCH_SERVING_LONG", "1000"))
CONCURRENCY = (8, 16, 32)
PROMPTS = (16, 64, 128)
OUTPUTS = (32, 64, 96)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _server(max_batch: int):
    import torch

    from tabula import load_spec
    from tabula.compiler import build_model
    from tabula.runtime.inference import Generator
    from tabula.runtime.serving.scheduler import SchedulerConfig
    from tabula.runtime.serving.server import build_server

    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from serving_setup import serve

    spec = load_spec(ROOT / "specs" / "quickstart.yaml")
    model = build_model(spec, vocab_size=4096, device="cpu").eval()
    generator = Generator(model, None, eos_id=None)  # ids in, ids out: every answer runs to its max_tokens
    server = build_server(generator, "quickstart", config=SchedulerConfig(max_batch=max_batch, max_queue=256))
    torch.manual_seed(0)
    return serve(server.app, server.scheduler), server


def _line(row: dict, base: float | None) -> str:
    ratio = f"{row['tok/s'] / base:5.2f}x" if base else "  1.00x"
    return (f"  {row['concurrency']:>4}  {row['requests']:>5}  {row['tok/s']:8.1f}  {row['ttft_p50']:7.3f}  {row['ttft_p99']:7.3f}  "
            f"{row['latency_p50']:7.3f}  {row['latency_p99']:7.3f}  {row['errors']:>6}  {ratio}")


def run_load(*args, **kwargs):
    """The load test in a process of its own, so that the clients' JSON parsing does not take the GIL from
    the server it measures."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tabula.runtime.serving.loadtest import run_load as load

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(load, *args, **kwargs).result()


def main() -> None:
    import torch

    from tabula.runtime.serving.loadtest import mix

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    live, server = _server(max_batch=max(CONCURRENCY))
    try:
        requests = mix(REQUESTS, PROMPTS, OUTPUTS, vocab=4096)
        run_load(live.url, "quickstart", requests[:4], 4)  # warm-up: first allocations, first kernels
        print(f"  quickstart model, {REQUESTS} requests: prompts {PROMPTS} x answers {OUTPUTS} tokens, greedy, "
              f"torch threads {torch.get_num_threads()}")
        print("  conc.  reqs.     tok/s  ttft50s  ttft99s   lat50s   lat99s  errors  vs sequential")
        sequential = run_load(live.url, "quickstart", requests, 1).row()
        print(_line(sequential, None), flush=True)
        for concurrency in CONCURRENCY:
            print(_line(run_load(live.url, "quickstart", requests, concurrency).row(), sequential["tok/s"]), flush=True)
        print(f"  scheduler: {server.scheduler.counters.steps} decode steps, {server.scheduler.counters.prefills} prefills, "
              f"{server.scheduler.counters.preempted} preempted; cache pool {server.scheduler.pool.n_blocks} blocks "
              f"of {server.scheduler.pool.block_size} tokens")
        if LONG:
            _memory_run(live, LONG)
    finally:
        live.close()


def _memory_run(live, total: int) -> None:
    from tabula.runtime.serving.loadtest import mix

    requests = mix(total, (16, 64), (16, 32), vocab=4096, seed=1)
    readings, errors, done = [], 0, 0
    started = time.perf_counter()
    for start in range(0, total, 100):
        report = run_load(live.url, "quickstart", requests[start:start + 100], 16)
        errors += len(report.errors)
        done += report.requests
        readings.append(_rss_mib())
    print(f"  memory over {done} requests at 16 clients ({time.perf_counter() - started:.0f} s, {errors} errors): resident MiB every 100: "
          + " ".join(f"{r:.0f}" for r in readings)
          + f"  (last - second: {readings[-1] - readings[min(1, len(readings) - 1)]:+.0f} MiB)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
