"""FlexAttention (attention.backend: flex) against the dense-mask path (sdpa) for a sliding window of
128 at 2048 tokens, GQA (8 query heads sharing 2 key/value heads), fp32, in this one process.

The dense path repeats the shared key/value heads and hands SDPA a (T, T) boolean mask; FlexAttention
keeps the heads shared and skips the blocks of 128 that the window leaves out (15 of the 136 causal
blocks are computed). On CUDA both run forward + backward, FlexAttention compiled (its Triton kernel);
time is wall-clock and memory the peak allocated. On the CPU FlexAttention has no backward (torch 2.13):
forward only (no_grad), eager (unfused: it materialises the scores) and compiled; time is this
process's CPU time on one thread. Printed: ms per call and the ratio flex / dense (below 1: flex faster).

    python bench/bench_flex.py [--steps N] [--seq-len T] [--window W]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tabula.compiler.blocks.attention import attend
from tabula.compiler.blocks.masks import block_mask, dense_mask
from tabula.schemas.blocks.sparsity import MaskPattern

HEADS, KV_HEADS, HEAD_DIM, BATCH = 8, 2, 64, 1


def timed(fn, steps: int, cuda: bool) -> tuple[float, int]:
    """Median seconds of `fn` after two warm-up calls (which compile), and the peak bytes on CUDA (0 on the CPU)."""
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(2):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = clock()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() if cuda else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args(argv if argv is not None else [])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    T, pattern = args.seq_len, MaskPattern(args.window)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(BATCH, HEADS, T, HEAD_DIM, device=device, generator=g, requires_grad=cuda)
    k = torch.randn(BATCH, KV_HEADS, T, HEAD_DIM, device=device, generator=g, requires_grad=cuda)
    v = torch.randn(BATCH, KV_HEADS, T, HEAD_DIM, device=device, generator=g, requires_grad=cuda)
    dense, blocks = dense_mask(T, pattern, None, device), block_mask(T, pattern, None, device)
    print(f"   {device.type}, fp32, {BATCH} x {T} tokens, window {args.window}, {HEADS} heads / {KV_HEADS} kv heads x {HEAD_DIM}; "
          f"block mask {blocks.sparsity():.0f}% sparse")

    def step(mask):
        def call():
            out = attend(q, k, v, mask, 0.0)
            if cuda:
                out.square().sum().backward()
        return call

    with torch.set_grad_enabled(cuda):
        base, base_mem = timed(step(dense), args.steps, cuda)
        rows = [("flex (compiled)" if cuda else "flex (eager)", *timed(step(blocks), args.steps, cuda))]
        if not cuda:
            compiled = torch.compile(lambda: torch.nn.attention.flex_attention.flex_attention(q, k, v, block_mask=blocks, enable_gqa=True))
            rows.append(("flex (compiled)", *timed(compiled, args.steps, cuda)))
    what = "forward + backward" if cuda else "forward"
    print(f"   dense mask (sdpa)  {base * 1e3:9.2f} ms {what}" + (f"   peak {base_mem / 2**20:8.1f} MiB" if cuda else ""))
    for name, seconds, memory in rows:
        line = f"   {name:<18} {seconds * 1e3:9.2f} ms {what}   time ratio {seconds / base:.3f}"
        print(line + (f"   peak {memory / 2**20:8.1f} MiB   memory ratio {memory / base_mem:.3f}" if cuda else ""))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
