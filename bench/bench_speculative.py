"""Speculative decoding (runtime/inference/speculative.py) against plain cached decoding of the same target,
in one process.

The target is the quickstart model; the draft a smaller model (d_model 128, 2 layers) of the same spec's
data and tokenizer; both trained here for --train-tokens (kept in the tabula cache for the next run) or
given as run folders (--run, --draft). Greedy: the target's plain decoding of --new-tokens tokens after a
32-token validation prompt, then speculative decoding with k = 2, 4 and 6 (the same output, checked), each
timed in alternation, best of --repeats; sampling (temperature 0.8): the acceptance rate. Printed: the
acceptance rate, tokens per target pass, and the speed ratio to plain decoding (above 1: faster).

    python bench/bench_speculative.py [--run RUN_DIR --draft RUN_DIR] [--train-tokens 256k] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_models import trained  # noqa: E402

DRAFT = ["model.d_model=128", "model.n_layers=2", "model.block.attention.n_heads=4", "model.block.attention.n_kv_heads=1",
         "model.block.mlp.hidden=344"]


def plain(decoder, prompt: list[int], n: int) -> list[int]:
    cache = decoder.new_cache(1)
    logits = decoder.prefill(cache, [prompt])[0]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = decoder.step(cache, [out[-1]])[0]
    return out


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="the target's run folder (default: train the quickstart model now)")
    parser.add_argument("--draft", help="the draft's run folder (default: train a small quickstart now)")
    parser.add_argument("--train-tokens", default="256k", help="training budget of each model trained here")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per side (the best counts)")
    args = parser.parse_args(argv if argv is not None else [])

    from tabula.runtime.data import validation_batches
    from tabula.runtime.inference.decoder import Decoder
    from tabula.runtime.inference.sampling import SamplingParams
    from tabula.runtime.inference.speculative import SpeculativeDecoder

    budget = f"train.budget.tokens={args.train_tokens}"
    target, _, prepared = trained([budget], args.run)
    draft, _, _ = trained([budget, *DRAFT], args.draft)
    size = {name: sum(p.numel() for p in model.parameters()) / 1e6 for name, model in (("target", target), ("draft", draft))}
    print(f"   target {size['target']:.2f}M parameters, draft {size['draft']:.2f}M; {torch.get_num_threads()} threads")
    prompt = validation_batches(prepared, 4096, 256, 1)[0].input_ids[0, :32].tolist()
    greedy = SamplingParams(max_new_tokens=args.new_tokens)
    decoders = {k: SpeculativeDecoder(Decoder(target), Decoder(draft), k=k) for k in (2, 4, 6)}
    base = Decoder(target)
    with torch.no_grad():
        plain(base, prompt, 8)  # warm-up
        best = {name: float("inf") for name in ["plain", *decoders]}
        outputs = {}
        for _ in range(args.repeats):
            seconds, outputs["plain"] = timed(lambda: plain(base, prompt, args.new_tokens))
            best["plain"] = min(best["plain"], seconds)
            for k, speculative in decoders.items():
                seconds, out = timed(lambda: [t for t, _ in speculative.generate(prompt, greedy)])
                best[k], outputs[k] = min(best[k], seconds), out
        print(f"   plain greedy: {args.new_tokens / best['plain']:.1f} tokens/s")
        for k, speculative in decoders.items():
            stats = speculative.stats
            same = "same output" if outputs[k] == outputs["plain"] else "OUTPUT DIFFERS"
            print(f"   greedy k={k}: acceptance {stats.acceptance_rate:.0%}, {stats.tokens_per_round:.2f} tokens a target pass, "
                  f"{best['plain'] / best[k]:.2f}x plain's speed ({same})")
        sampled = decoders[4]
        accepted = proposed = 0
        for seed in range(4):
            for _ in sampled.generate(prompt, SamplingParams(max_new_tokens=args.new_tokens, temperature=0.8, seed=seed)):
                pass
            accepted, proposed = accepted + sampled.stats.accepted, proposed + sampled.stats.proposed
        print(f"   sampling (temperature 0.8, k=4, 4 seeds): acceptance {accepted / max(proposed, 1):.0%}")


if __name__ == "__main__":
    main(sys.argv[1:])
