"""Forward+backward time of tabula's quickstart model against a plain PyTorch GPT of the same shape.

The plain GPT below is what one would write by hand (nanoGPT style: fused qkv projection, RMSNorm,
RoPE, GQA through scaled_dot_product_attention, SwiGLU, tied head). Both run in fp32 with the same
batch, eager and compiled (tabula: its own per-block policy; plain: torch.compile of the model),
in this one process, timed in alternation. On a CPU the clock is this process's CPU time on
one thread, which other processes' load does not inflate the way it does wall-clock time
(this machine's 2 cores are shared); on a GPU it is wall-clock time. Printed: seconds per step and the ratio tabula / plain (below 1: tabula faster).

    python bench/bench_model.py [--steps N] [--batch B] [--no-compile]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# The quickstart model (specs/quickstart.yaml).
VOCAB, D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, HIDDEN, SEQ_LEN, THETA, EPS = 8192, 256, 4, 8, 2, 688, 256, 10000.0, 1e-5


class PlainBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = D_MODEL // N_HEADS
        self.norm1 = nn.RMSNorm(D_MODEL, eps=EPS)
        self.qkv = nn.Linear(D_MODEL, (N_HEADS + 2 * N_KV_HEADS) * self.head_dim, bias=False)
        self.proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.norm2 = nn.RMSNorm(D_MODEL, eps=EPS)
        self.gate_up = nn.Linear(D_MODEL, 2 * HIDDEN, bias=False)
        self.down = nn.Linear(HIDDEN, D_MODEL, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        hs = self.head_dim
        q, k, v = self.qkv(self.norm1(x)).split([N_HEADS * hs, N_KV_HEADS * hs, N_KV_HEADS * hs], dim=-1)
        q, k, v = q.view(B, T, N_HEADS, hs), k.view(B, T, N_KV_HEADS, hs), v.view(B, T, N_KV_HEADS, hs)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class PlainGPT(nn.Module):
    def __init__(self, vocab: int = VOCAB) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, D_MODEL)
        self.blocks = nn.ModuleList(PlainBlock() for _ in range(N_LAYERS))
        self.norm = nn.RMSNorm(D_MODEL, eps=EPS)
        hs = D_MODEL // N_HEADS
        inv_freq = 1.0 / THETA ** (torch.arange(0, hs, 2).float() / hs)
        freqs = torch.outer(torch.arange(SEQ_LEN).float(), inv_freq)
        table = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (T, 1, hs)
        self.register_buffer("cos", table.cos(), persistent=False)
        self.register_buffer("sin", table.sin(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * N_LAYERS) if p.shape[0] == D_MODEL and p is not self.embed.weight else 0.02)

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = F.linear(self.norm(x), self.embed.weight)
        return logits, F.cross_entropy(logits.float().view(-1, self.vocab), targets.reshape(-1))


def tabula_model(device):
    from ruamel.yaml import YAML

    from tabula.compiler import build_model
    from tabula.schemas.spec import Spec

    spec = Spec.model_validate(YAML(typ="safe").load((ROOT / "specs" / "quickstart.yaml").read_text()))
    return spec, build_model(spec, vocab_size=VOCAB, device=device)


def compare(ours, plain, ids, steps: int) -> tuple[float, float]:
    """Median seconds of forward+backward for each model after two warm-up steps (which also
    compile), the two timed in alternation so that load from other processes hits both alike."""
    clock = time.perf_counter if ids.device.type == "cuda" else time.process_time

    def one(model) -> float:
        start = clock()
        _, loss = model(ids, ids)
        loss.backward()
        if ids.device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    for _ in range(2):
        one(ours), one(plain)
    times = [(one(ours), one(plain)) for _ in range(steps)]
    return statistics.median(t for t, _ in times), statistics.median(t for _, t in times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv if argv is not None else [])
    from tabula.compiler import apply_compile
    from tabula.schemas.model import Compile

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (args.batch, SEQ_LEN), device=device)
    spec, ours = tabula_model(device)
    plain = PlainGPT().to(device)
    n_ours, n_plain = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in plain.parameters())
    clock = "wall-clock" if device == "cuda" else "CPU time, 1 thread"
    print(f"   {device} ({clock}), fp32, batch {args.batch} x {SEQ_LEN}, {n_ours:,} parameters (plain GPT {n_plain:,})")
    rows = [("eager", *compare(ours, plain, ids, args.steps))]
    if not args.no_compile:
        apply_compile(ours, Compile(enabled=True, scope="block"), device)
        plain.compile()
        rows.append(("compiled", *compare(ours, plain, ids, args.steps)))
    for name, t_ours, t_plain in rows:
        print(f"   {name:9s} tabula {t_ours * 1e3:8.1f} ms/step   plain {t_plain * 1e3:8.1f} ms/step   ratio {t_ours / t_plain:.3f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
