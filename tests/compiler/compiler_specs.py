"""Tiny specs for compiler tests, built from dicts (no files, no tokenizer)."""

from __future__ import annotations

import copy
from typing import Any

from tabula.schemas.spec import Spec

BASE: dict[str, Any] = {
    "name": "tiny",
    "seed": 7,
    "model": {
        "vocab_size": 97,
        "d_model": 64,
        "n_layers": 2,
        "max_seq_len": 32,
        "position": {"kind": "rope", "theta": 10000.0},
        "block": {
            "norm": {"kind": "rmsnorm", "eps": 1e-5},
            "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
            "mlp": {"kind": "swiglu", "hidden": 96},
        },
        "tie_embeddings": True,
    },
    "data": {
        "tokenizer": {"kind": "file", "path": "tokenizer.json"},
        "sources": {"text": {"kind": "python_stdlib"}},
        "curriculum": [{"seq_len": 8, "mix": {"text": 1.0}}],
    },
    "train": {"batch_tokens": 64, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 1024}},
}


def tiny_spec(**model: Any) -> Spec:
    """The tiny spec with `model` keys replaced (block keys go under model={'block': {...}})."""
    raw = copy.deepcopy(BASE)
    for key, value in model.items():
        if key == "block":
            raw["model"]["block"].update(value)
        else:
            raw["model"][key] = value
    return Spec.model_validate(raw)
