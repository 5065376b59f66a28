"""Corpora and specs the data tests write themselves (no downloads, no stdlib-sized work)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tabula.schemas.spec import Spec

WORDS = (
    "the model reads tokens while data flows through filters into shards and every epoch "
    "repeats windows of text that a sampler draws from sources under a seeded permutation "
    "alpha beta gamma delta river stone cloud light garden window paper engine"
).split()

BASE = {
    "name": "datatest",
    "seed": 7,
    "model": {"d_model": 32, "n_layers": 1, "max_seq_len": 64,
              "block": {"attention": {"kind": "gqa", "n_heads": 2, "n_kv_heads": 1}, "mlp": {"kind": "swiglu", "hidden": 64}}},
    "train": {"batch_tokens": 256, "optimizer": {"kind": "adamw", "lr": 1.0e-3}, "budget": {"tokens": 4096}},
}


def document(rng: np.random.Generator, words: int = 60) -> str:
    return " ".join(rng.choice(WORDS, size=words)) + "."


def write_texts(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(texts):
        (folder / f"doc{index:04d}.txt").write_text(text)
    return folder


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def make_spec(data: dict, **top) -> Spec:
    """A valid Spec around a `data:` section (a small bpe tokenizer unless data names one)."""
    raw = copy.deepcopy(BASE)
    raw.update(top)
    raw["data"] = {"tokenizer": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}, **data}
    return Spec.model_validate(raw)


@dataclass
class Stage:
    """The StagePlan fields the sampler reads (a stand-in independent of the compiler's plan)."""

    index: int
    start_tokens: int
    end_tokens: int
    seq_len: int
    mix: dict


def documents_of(shard, tokenizer, eos_id: int) -> list[str]:
    """Decode a shard back into its documents (each ends with the end-of-document token)."""
    tokens, ends = np.asarray(shard.tokens), np.asarray(shard.document_ends)
    texts, start = [], 0
    for end in ends.tolist():
        assert tokens[end - 1] == eos_id
        texts.append(tokenizer.decode(tokens[start : end - 1].tolist()))
        start = end
    return texts
