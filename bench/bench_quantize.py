"""Weight-only int8 and int4 (runtime/inference/quantize.py, torchao) against the fp32 model, in one process.

The model is the quickstart's (specs/quickstart.yaml), trained here for --train-tokens (or a run folder
given with --run); each side is a fresh copy of it, quantized by `quantize_model` (int4 at its default group
size). Measured per side: the weights' bytes as stored, held-out perplexity on the quickstart's validation
split (--eval-tokens in windows of 256), and greedy decoding speed through the KV-cached Decoder (batch 1,
a 32-token prompt, --new-tokens new tokens), the sides timed in alternation, best of --repeats. Printed:
each side and its ratios to fp32 (memory and speed below 1: smaller, slower).

    python bench/bench_quantize.py [--run RUN_DIR] [--train-tokens 256k] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_models import trained  # noqa: E402


def decode_seconds(model, prompt: list[int], new_tokens: int) -> float:
    from tabula.runtime.inference.decoder import Decoder

    decoder = Decoder(model)
    started = time.perf_counter()
    cache = decoder.new_cache(1)
    logits = decoder.prefill(cache, [prompt])[0]
    for _ in range(new_tokens):
        logits = decoder.step(cache, [int(logits.argmax())])[0]
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run folder (default: train the quickstart model now)")
    parser.add_argument("--train-tokens", default="256k", help="training budget when no --run is given")
    parser.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for the perplexity")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded for the speed")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per side (the best counts)")
    args = parser.parse_args(argv if argv is not None else [])

    from tabula.runtime.data import validation_batches
    from tabula.runtime.inference.perplexity import perplexity
    from tabula.runtime.inference.quantize import quantize_model, weight_bytes
    from tabula.schemas.units import format_bytes

    started = time.perf_counter()
    model, spec, prepared = trained([f"train.budget.tokens={args.train_tokens}"], args.run)
    print(f"   model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"trained in {time.perf_counter() - started:.0f} s; {torch.get_num_threads()} threads")
    batches = validation_batches(prepared, args.eval_tokens, 256, 8)
    prompt = batches[0].input_ids[0, :32].tolist()
    sides = {"fp32": model}
    notes = {}
    for method in ("int8", "int4"):
        sides[method] = copy.deepcopy(model)
        result = quantize_model(sides[method], method)
        notes[method] = f"group {result.group_size}" if result.group_size else "per row"
    with torch.no_grad():
        for side in sides.values():
            decode_seconds(side, prompt, 8)  # warm-up
        best = {name: float("inf") for name in sides}
        for _ in range(args.repeats):
            for name, side in sides.items():
                best[name] = min(best[name], decode_seconds(side, prompt, args.new_tokens))
    rows = {name: (weight_bytes(side), perplexity(side, batches), args.new_tokens / best[name]) for name, side in sides.items()}
    base_bytes, base_ppl, base_speed = rows["fp32"]
    print(f"   {'':6} {'weights':>10} {'ppl':>8} {'tok/s':>8}   {'weights':>8} {'ppl':>8} {'speed':>7}  (ratio to fp32)")
    for name, (size, ppl, speed) in rows.items():
        print(f"   {name:6} {format_bytes(size):>10} {ppl:8.3f} {speed:8.1f}   {size / base_bytes:8.3f} {ppl / base_ppl:8.4f} "
              f"{speed / base_speed:7.2f}  {notes.get(name, '')}")


if __name__ == "__main__":
    main(sys.argv[1:])
