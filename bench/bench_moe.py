"""A mixture-of-experts training step against a dense model of equal active parameters.

The MoE model: specs/presets/mixtral-tiny.yaml's shape (d_model 256, 4 layers, 8 SwiGLU experts of
256, top 2). The dense model: the same with one SwiGLU of 2 x 256 (what a token runs through in the
MoE, the router aside). Both fp32, eager, the same batch, forward + backward + AdamW step, timed in
alternation in this process (on a CPU, this process's CPU time on one thread, as bench_model.py).
Printed: seconds per step, active parameters and the ratio moe / dense (goal <= 1.5).

    python bench/bench_moe.py [--steps N] [--batch B] [--seq-len T]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def models(seq_len: int):
    from tabula import load_spec
    from tabula.compiler import build_model
    from tabula.compiler.estimate import count_parameters

    base = ["model.vocab_size=8192", f"model.max_seq_len={max(seq_len, 256)}"]
    moe = load_spec(ROOT / "specs" / "presets" / "mixtral-tiny.yaml", overrides=base)
    dense = load_spec(ROOT / "specs" / "presets" / "mixtral-tiny.yaml",
                      overrides=[*base, "model.block.mlp={kind: swiglu, hidden: 512}"])
    built = {}
    for name, spec in (("moe", moe), ("dense", dense)):
        model = build_model(spec, device="cpu").train()
        built[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), count_parameters(spec.model, 8192).active)
    return built


def step(model, optimizer, ids) -> None:
    _, loss = model(ids, ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each model")
    parser.add_argument("--batch", type=int, default=8, help="sequences a step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens a sequence")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    built = {name: (model.to(device), optimizer, active) for name, (model, optimizer, active) in models(args.seq_len).items()}
    ids = torch.randint(0, 8192, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    clock = time.perf_counter if cuda else time.process_time
    times: dict[str, list[float]] = {name: [] for name in built}
    for name, (model, optimizer, _) in built.items():  # warm-up
        step(model, optimizer, ids)
    for _ in range(args.steps):
        for name, (model, optimizer, _) in built.items():
            if cuda:
                torch.cuda.synchronize()
            started = clock()
            step(model, optimizer, ids)
            if cuda:
                torch.cuda.synchronize()
            times[name].append(clock() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, (_, _, active) in built.items():
        print(f"   {name:<6} {medians[name] * 1000:8.1f} ms/step   {active / 1e6:.2f}M active parameters   ({device.type}, {args.batch} x {args.seq_len})")
    print(f"   moe / dense: {medians['moe'] / medians['dense']:.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()
