"""Mamba's selective-scan mixer against attention, one layer each, at sequence lengths 256-4096.

Both are tabula's own modules at the same width (d_model 256): the Mamba mixer (expand 2, d_state
16, the chunked parallel scan) and grouped-query attention (8 heads, 2 key/value heads, RoPE,
PyTorch's fused causal kernel), forward + backward of one sequence in fp32, timed in alternation
in this one process (median of the steps; on a CPU this process's CPU time on one thread, on a
GPU wall-clock). Memory is the peak of everything the step allocates besides the parameters
(activations, temporaries, gradients), from torch's MemTracker on a CPU and the CUDA allocator's
peak on a GPU. Printed: each side and the ratio mamba / attention (below 1: Mamba cheaper).
Attention's cost grows with the square of the length, the scan's linearly.

    python bench/bench_mamba.py [--steps N] [--lengths 256,1024] [--chunk K]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

D_MODEL, N_HEADS, N_KV_HEADS = 256, 8, 2


def modules(device: str, chunk: int):
    from tabula.compiler.blocks import build_attention, build_position
    from tabula.compiler.blocks.init import WeightInit
    from tabula.compiler.blocks.mamba import Mixer
    from tabula.schemas.blocks.mamba import MambaMixer
    from tabula.schemas.init import GPT2Init
    from tabula.schemas.model import GQA, Rope

    init = WeightInit(GPT2Init(), seed=0, n_layers=1)
    mamba = Mixer.build(MambaMixer(chunk=chunk), D_MODEL).to(device)
    mamba.init_weights(init)
    attention_spec = GQA(kind="gqa", n_heads=N_HEADS, n_kv_heads=N_KV_HEADS)
    attention = build_attention(attention_spec, d_model=D_MODEL, norm_eps=1e-5, dropout=0.0).to(device)
    attention.init_weights(init)
    rope = build_position(Rope(kind="rope"), d_model=D_MODEL, rotary_dim=D_MODEL // N_HEADS, max_seq_len=8192).to(device)
    rope.init_weights(init)
    return mamba, attention, rope


def timed(step, device: str) -> float:
    clock = time.perf_counter if device == "cuda" else time.process_time
    start = clock()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def peak_bytes(step, module, device: str) -> int:
    """Peak bytes the step allocates beyond the module's parameters."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(module)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device(device)]
    return peak["Total"] - sum(value for key, value in peak.items() if getattr(key, "value", None) == "Parameter")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--chunk", type=int, default=32, help="tokens per chunk of the scan")
    args = parser.parse_args(argv if argv is not None else [])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    mamba, attention, rope = modules(device, args.chunk)
    clock = "wall-clock" if device == "cuda" else "CPU time, 1 thread"
    print(f"   {device} ({clock}), fp32, 1 sequence, d_model {D_MODEL}: mamba (expand 2, d_state 16, chunk {args.chunk}) "
          f"vs gqa ({N_HEADS} heads, {N_KV_HEADS} kv)")
    print(f"   {'tokens':>6}  {'attn ms':>8} {'mamba ms':>9} {'ratio':>6}   {'attn MiB':>8} {'mamba MiB':>9} {'ratio':>6}")
    for length in (int(n) for n in args.lengths.split(",")):
        x = torch.randn(1, length, D_MODEL, device=device, requires_grad=True)

        def attend() -> None:
            h, tables = rope(x)
            attention(h, tables, None).square().mean().backward()

        def scan() -> None:
            mamba(x).square().mean().backward()

        attend(), scan()  # warm-up
        times = [(timed(attend, device), timed(scan, device)) for _ in range(args.steps)]
        t_attn, t_mamba = statistics.median(a for a, _ in times), statistics.median(m for _, m in times)
        m_attn, m_mamba = peak_bytes(attend, attention, device), peak_bytes(scan, mamba, device)
        print(f"   {length:>6}  {t_attn * 1e3:8.1f} {t_mamba * 1e3:9.1f} {t_mamba / t_attn:6.2f}   "
              f"{m_attn / 2**20:8.1f} {m_mamba / 2**20:9.1f} {m_mamba / m_attn:6.2f}", flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
