"""Specs for the plan, estimate and impact tests, built from dicts (no files, no tokenizer)."""

from __future__ import annotations

import copy
from typing import Any

from tabula.schemas.spec import Spec

BASE: dict[str, Any] = {
    "name": "planned",
    "model": {
        "vocab_size": 512,
        "d_model": 64,
        "n_layers": 2,
        "max_seq_len": 128,
        "block": {
            "norm": {"kind": "rmsnorm"},
            "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
            "mlp": {"kind": "swiglu", "hidden": 160},
        },
    },
    "data": {
        "tokenizer": {"kind": "bpe", "vocab_size": 512},
        "sources": {"code": {"kind": "python_stdlib"}, "prose": {"kind": "python_stdlib", "include": ["docstrings"]}},
    },
    "train": {"batch_tokens": 4096, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 65536}},
}


def raw_spec(**changes: Any) -> dict[str, Any]:
    """BASE with dotted keys replaced: raw_spec(**{"train.batch_tokens": 1024})."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def spec(**changes: Any) -> Spec:
    return Spec.model_validate(raw_spec(**changes))
