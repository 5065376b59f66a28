"""Inference (runtime/inference): the KV cache against recomputing, tabula against transformers, MLA's cache.

1. cached vs uncached greedy generation of 512 new tokens on the quickstart model (seed-initialised, its
   max_seq_len raised to hold prompt + 512): the Generator against runtime/inference/reference.py's
   recompute (the training sample's old way). Expect >= 10x.
2. tabula's Generator against transformers' `generate` (greedy, KV cache) on the same exported weights
   (`tabula export`'s writer; tabula reads the folder back with load_generator as `tabula generate HF_DIR`
   does), batch 1 and 8; the tokens are compared too. Goal: tabula's time <= 1.0x transformers'.
3. cache bytes per token of the quickstart model with MLA against the same model with GQA, measured from
   the caches.

Timed alternately, best of `--repeats`, wall-clock. Nothing is asserted.

    python bench/bench_inference.py [--new-tokens 512] [--hf-new-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 4096


def _spec(*overrides: str):
    from tabula.schemas.loader import load_spec

    return load_spec(ROOT / "specs" / "quickstart.yaml", [f"model.vocab_size={VOCAB}", "model.max_seq_len=1024", *overrides])


def _model(spec):
    from tabula.compiler import build_model

    return build_model(spec).materialize("cpu", spec.seed).eval()


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def cached_vs_uncached(new_tokens: int, repeats: int) -> None:
    from tabula.runtime.inference import Generator, SamplingParams
    from tabula.runtime.inference.reference import recompute_greedy

    model = _model(_spec())
    prompt = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    generator = Generator(model)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    cached, out = _best(lambda: generator.generate(prompt[0].tolist(), params).token_ids, repeats)
    uncached, ref = _best(lambda: recompute_greedy(model, prompt, new_tokens)[0, 16:].tolist(), 1)
    print(f"   {new_tokens} new tokens, quickstart model: cached {cached:.2f} s ({new_tokens / cached:.0f} tok/s), "
          f"uncached {uncached:.2f} s ({new_tokens / uncached:.0f} tok/s): {uncached / cached:.1f}x faster; same tokens: {out == ref}")


def tabula_vs_transformers(new_tokens: int, repeats: int) -> None:
    from transformers import AutoModelForCausalLM

    from tabula.compiler.hf import write_hf
    from tabula.runtime.inference import SamplingParams, load_generator

    spec = _spec()
    with tempfile.TemporaryDirectory() as folder:
        write_hf(folder, spec.model, _model(spec).state_dict(), VOCAB)
        ours = load_generator(folder)
        theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    for batch in (1, 8):
        prompts = torch.randint(0, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(batch))

        def hf():
            with torch.no_grad():
                out = theirs.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            return out[:, 16:].tolist()

        def tabula():
            return [c.token_ids for c in ours.generate(prompts.tolist(), params)]

        t_hf, t_ours = float("inf"), float("inf")
        for _ in range(repeats):  # alternated: other processes' load hits both alike
            seconds, hf_ids = _best(hf, 1)
            t_hf = min(t_hf, seconds)
            seconds, our_ids = _best(tabula, 1)
            t_ours = min(t_ours, seconds)
        same = sum(a == b for a, b in zip(hf_ids, our_ids))
        print(f"   batch {batch}, {new_tokens} new tokens: tabula {t_ours:.2f} s, transformers {t_hf:.2f} s: "
              f"{t_ours / t_hf:.2f}x transformers' time; identical rows {same}/{batch}")


def mla_cache_bytes() -> None:
    from tabula.runtime.inference import Decoder

    sizes = {}
    kinds = {
        "gqa (8 heads, 2 kv heads of 32)": "model.block.attention={kind: gqa, n_heads: 8, n_kv_heads: 2}",
        "mla (kv_latent 64, rope_head_dim 16)": "model.block.attention={kind: mla, n_heads: 8, kv_latent: 64, rope_head_dim: 16}",
    }
    for name, override in kinds.items():
        decoder = Decoder(_model(_spec(override)))
        cache = decoder.new_cache(1)
        decoder.prefill(cache, [[1, 2, 3]])
        sizes[name] = cache.bytes_per_token()
        print(f"   {name}: {sizes[name]} bytes a token over 4 layers (fp32)")
    gqa, mla = sizes.values()
    print(f"   MLA's cache is {mla / gqa:.2f}x GQA's")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--hf-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv or [])
    cached_vs_uncached(args.new_tokens, args.repeats)
    try:
        tabula_vs_transformers(args.hf_new_tokens, args.repeats)
    except ImportError as error:
        print(f"   transformers comparison skipped: {error}")
    mla_cache_bytes()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
