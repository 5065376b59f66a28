"""A LoRA training step against a full fine-tuning step of the same model, in one process.

Both sides are the quickstart model (specs/quickstart.yaml) with the same seed-drawn base weights, tabula's
AdamW and parameter groups, the same batch: one side with `train.finetune: {kind: lora, rank: 8}` (attention
and MLP adapted, the base frozen, applied by compiler/adapters.apply_finetune as a run applies it), the
other training every parameter. A step is forward, backward and the optimizer's update; the two are timed
in alternation after two warm-up steps so that other processes' load hits both alike (on a CPU, this
process's CPU time on one thread; on a GPU, wall-clock time). Memory is what the optimizer holds after a
step (its state tensors) and the gradients, measured from the tensors, beside the plan's estimate
(compiler/estimate.py). Printed: each side and the ratios LoRA / full (below 1: LoRA cheaper).

    python bench/bench_lora.py [--steps N] [--batch B] [--rank R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB, SEQ_LEN = 8192, 256


def _spec(finetune: str | None):
    from tabula.schemas.loader import load_spec

    overrides = [f"model.vocab_size={VOCAB}"] + ([f"train.finetune={finetune}"] if finetune else [])
    return load_spec(ROOT / "specs" / "quickstart.yaml", overrides)


def _side(spec, device):
    """(model, optimizer) as build_local_engine makes them, without the engine."""
    from tabula.compiler.adapters import apply_finetune
    from tabula.runtime.build import build_base_model
    from tabula.runtime.optimizers import build_optimizer

    model = build_base_model(spec, VOCAB, device)
    apply_finetune(model, spec.train.finetune, seed=spec.seed, model_spec=spec.model)
    return model, build_optimizer(spec.train.optimizer, model, torch.device(device))


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _held(model, optimizer) -> tuple[int, int]:
    """(optimizer state bytes, gradient bytes) the side holds after a step, zero_grad(set_to_none=False)."""
    state = _bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    grads = _bytes(p.grad for p in model.parameters() if p.grad is not None)
    return state, grads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv if argv is not None else [])
    from tabula.compiler.estimate import count_trainable, model_state_bytes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    clock = time.perf_counter if device == "cuda" else time.process_time
    lora_spec = _spec(f"{{kind: lora, rank: {args.rank}, targets: [attn.*, mlp.*]}}")
    sides = {"full": _side(_spec(None), device), "lora": _side(lora_spec, device)}
    ids = torch.randint(0, VOCAB, (args.batch, SEQ_LEN), device=device, generator=torch.Generator(device).manual_seed(0))

    def step(name: str) -> float:
        model, optimizer = sides[name]
        start = clock()
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients' memory to count it
        if device == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    for _ in range(2):
        step("full"), step("lora")
    times = {"full": [], "lora": []}
    for _ in range(args.steps):
        for name in ("full", "lora"):
            times[name].append(step(name))
    trained = count_trainable(lora_spec, VOCAB)
    print(f"   {device} ({'wall-clock' if device == 'cuda' else 'CPU time, 1 thread'}), fp32, batch {args.batch} x {SEQ_LEN}, "
          f"quickstart model: {trained.frozen:,} parameters, LoRA rank {args.rank} trains {trained.trainable:,}")
    measured = {}
    for name, (model, optimizer) in sides.items():
        state, grads = _held(model, optimizer)
        planned, _ = model_state_bytes(lora_spec if name == "lora" else _spec(None), VOCAB, "fp32", 1)
        measured[name] = (statistics.median(times[name]), state, grads)
        print(f"   {name:5s} {measured[name][0] * 1e3:8.1f} ms/step   optimizer state {state / 2**20:7.2f} MiB "
              f"(plan {planned['optimizer_state'] / 2**20:.2f})   gradients {grads / 2**20:7.2f} MiB (plan {planned['gradients'] / 2**20:.2f})")
    (t_full, s_full, g_full), (t_lora, s_lora, g_lora) = measured["full"], measured["lora"]
    print(f"   ratio lora / full: step time {t_lora / t_full:.3f}   optimizer state {s_lora / s_full:.4f}   gradients {g_lora / g_full:.4f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
