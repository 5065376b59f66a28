"""Chunked linear + cross-entropy (model.kernels.cross_entropy: chunked) against the standard loss
(the full logits, then cross-entropy) at the TabulaPrima vocabulary of 100,277, forward + backward.

Each side runs in a child process of its own (same invocation), so its peak memory is its own: CPU,
the growth of the child's peak resident memory over its inputs; CUDA, torch's peak allocated bytes.
Time: the median of a few steps (CPU time on one thread on a CPU, wall-clock on CUDA). Printed: each
side's time and peak, and the ratios chunked / standard (below 1: chunked smaller or faster).

    python bench/bench_loss.py [--tokens N] [--d-model C] [--chunk N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VOCAB = 100_277


def side(name: str, tokens: int, d_model: int, chunk: int, steps: int) -> dict[str, float]:
    """One side's median step seconds and peak bytes above its inputs."""
    from tabula.compiler.kernels import chunked_linear_cross_entropy
    from tabula.compiler.model import cross_entropy

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(1)
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(1, tokens, d_model, device=device, generator=g) * 0.5).requires_grad_()
    weight = (torch.randn(VOCAB, d_model, device=device, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, VOCAB, (1, tokens), device=device, generator=g)

    def step():
        x.grad = weight.grad = None
        if name == "chunked":
            loss = chunked_linear_cross_entropy(x, weight, targets, chunk)
        else:
            loss = cross_entropy(x @ weight.T, targets)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()

    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(steps):
        start = clock()
        step()
        times.append(clock() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times[1:] or times), "peak": peak - base, "device": device}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=None, help="tokens a step (default: 8 x 512 on CUDA, 2048 on a CPU)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=None, help="tokens a chunk (default: an eighth of the tokens)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side", choices=["standard", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    tokens = args.tokens or (8 * 512 if torch.cuda.is_available() else 2048)
    args.chunk = args.chunk or max(1, tokens // 8)
    if args.side:
        print(json.dumps(side(args.side, tokens, args.d_model, args.chunk, args.steps)))
        return
    results = {}
    for name in ("standard", "chunked"):
        command = [sys.executable, __file__, "--side", name, "--tokens", str(tokens), "--d-model", str(args.d_model),
                   "--chunk", str(args.chunk), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    standard, chunked = results["standard"], results["chunked"]
    logits = tokens * VOCAB * 4
    print(f"   {standard['device']}, fp32, {tokens} tokens x vocab {VOCAB:,} (logits alone {logits / 2**30:.2f} GiB), "
          f"d_model {args.d_model}, chunk {args.chunk}")
    for name, result in results.items():
        print(f"   {name:<9} {result['seconds'] * 1e3:9.1f} ms forward + backward   peak {result['peak'] / 2**20:9.1f} MiB")
    print(f"   chunked / standard: time {chunked['seconds'] / standard['seconds']:.3f}   peak memory {chunked['peak'] / max(standard['peak'], 1):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
