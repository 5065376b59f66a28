"""What the serving tests share: a tiny model with a small byte-level BPE (ChatML's tokens special), its
reference greedy output (the model's own uncached `generate`), a decoder for the scheduler, and a live
server on a free loopback port (uvicorn on a thread)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tabula.compiler import build_model
from tabula.runtime.data.chat_template import TEMPLATES

CHATML = TEMPLATES["chatml"]()
TEXT = ("def main(argv):\n    return parse(argv) or 0\n\nclass Reader:\n    def read(self, n=-1):\n        return self.buffer[:n]\n"
        "import os\nimport sys\nfrom pathlib import Path\n# a comment about caches and servers, ünïcødé too\n") * 8


@contextmanager
def one_thread():
    """Torch on one thread while a module's tests run: a d_model-32 model's matmuls gain nothing from more, and
    on a shared 2-core machine several threads a forward cost 20x more (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", *CHATML.special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


MLA = {"kind": "mla", "n_heads": 4, "head_dim": 24, "rope_head_dim": 8, "v_head_dim": 16, "q_latent": 32, "kv_latent": 24}


def tiny_model(vocab_size: int, *, window: int | None = None, max_seq_len: int = 128, attention: dict | None = None):
    """d_model 32, 2 layers, GQA (with a sliding window where asked) or the given attention, seed-initialised."""
    from tabula.schemas.spec import Spec

    attention = attention or {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, **({"window": window} if window else {})}
    spec = Spec.model_validate({
        "name": "tiny-serve", "seed": 7,
        "model": {"vocab_size": vocab_size, "d_model": 32, "n_layers": 2, "max_seq_len": max_seq_len,
                  "position": {"kind": "rope", "theta": 10000.0},
                  "block": {"norm": {"kind": "rmsnorm", "eps": 1e-5}, "attention": attention, "mlp": {"kind": "swiglu", "hidden": 64}},
                  "tie_embeddings": False},
        "data": {"tokenizer": {"kind": "file", "path": "tokenizer.json"}, "sources": {"text": {"kind": "python_stdlib"}},
                 "curriculum": [{"seq_len": 8, "mix": {"text": 1.0}}]},
        "train": {"batch_tokens": 64, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 1024}},
    })
    model = build_model(spec, device="cpu").eval()
    with torch.no_grad():  # larger logits than the init's: greedy choices far from ties, varied tokens
        model.lm_head.weight.mul_(8.0)
    return model


def greedy_reference(model, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """The model's own uncached greedy continuation of one prompt, cut at the first stop token."""
    from tabula.runtime.inference.reference import recompute_greedy

    out = recompute_greedy(model, torch.tensor([prompt]), max_new_tokens)[0, len(prompt):].tolist()
    for i, token in enumerate(out):
        if token in stop_ids:
            return out[:i]
    return out


class RecomputeCache:
    """Each row's tokens; rows leave (select) and join (concat) as the inference core's Cache's do."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    @property
    def batch(self) -> int:
        return len(self.rows)

    def select(self, rows: list[int]) -> RecomputeCache:
        return RecomputeCache([list(self.rows[i]) for i in rows])

    @staticmethod
    def concat(caches: list[RecomputeCache]) -> RecomputeCache:
        return RecomputeCache([row for cache in caches for row in cache.rows])


class RecomputeDecoder:
    """The decoder protocol without a cache: every row's whole context recomputed alone (a reference)."""

    def __init__(self, model) -> None:
        self.model = model
        self.max_len = model.max_seq_len

    def new_cache(self, batch: int) -> RecomputeCache:
        return RecomputeCache([[] for _ in range(batch)])

    @torch.no_grad()
    def _last(self, cache: RecomputeCache) -> torch.Tensor:
        return torch.stack([self.model(torch.tensor([row]))[0, -1] for row in cache.rows])  # (B, vocab)

    def prefill(self, cache: RecomputeCache, prompts: list[list[int]]) -> torch.Tensor:
        for row, prompt in zip(cache.rows, prompts):
            row.extend(prompt)
        return self._last(cache)

    def step(self, cache: RecomputeCache, tokens: list[int]) -> torch.Tensor:
        for row, token in zip(cache.rows, tokens):
            row.append(int(token))
        return self._last(cache)


def make_decoder(model):
    """The inference core's Decoder over the model where it exists, else the recomputing reference."""
    try:
        from tabula.runtime.inference import Decoder
    except ImportError:
        return RecomputeDecoder(model)
    return Decoder(model)


@dataclass
class LiveServer:
    url: str
    server: Any
    thread: threading.Thread
    scheduler: Any

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.scheduler.close()


def serve(app, scheduler) -> LiveServer:
    """The app under uvicorn on 127.0.0.1, on a port the OS picked (the socket is bound before the server starts)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", server, thread, scheduler)
