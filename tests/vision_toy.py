"""The toy image-text task the vision tests share: specs/data/make_shapes.py's coloured shapes and a
tiny model (LM d_model 32, 1 layer; ViT 16 px, patch 4: 16 image tokens, d_model 32, 1 layer)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 42  # two documents of 16 image tokens, a caption and the end-of-document token

SPEC: dict[str, Any] = {
    "name": "vision-test",
    "seed": 3,
    "model": {
        "d_model": 32, "n_layers": 1, "max_seq_len": 64,
        "block": {"attention": {"kind": "mha", "n_heads": 2}, "mlp": {"kind": "gelu", "hidden": 64}},
        "vision": {"encoder": {"kind": "vit", "image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 1, "n_heads": 2}},
    },
    "data": {
        "tokenizer": {"kind": "bpe", "vocab_size": 280, "min_frequency": 1},
        "sources": {"shapes": {"kind": "image_text", "paths": ["shapes"], "format": "folder"}},
        "validation": {"fraction": 0.05},
        "curriculum": [{"seq_len": SEQ_LEN}],
        "workers": 1,
    },
    "parallel": {"backend": "local", "precision": "fp32"},
    "train": {
        "batch_tokens": 8 * SEQ_LEN, "optimizer": {"kind": "adamw", "lr": 3.0e-3, "weight_decay": 0.0},
        "budget": {"tokens": 8 * SEQ_LEN}, "checkpoint": {"every_tokens": 10**9, "keep_last": 1}, "log": {"every_steps": 50},
    },
    "track": {"aim": {"enabled": False}},
}


def make_shapes_module() -> Any:
    """specs/data/make_shapes.py as a module (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "specs" / "data" / "make_shapes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_shapes(folder: Path, count: int = 120, *, blank: bool = False, seed: int = 0) -> Path:
    return make_shapes_module().make_shapes(folder, count, 16, seed, blank)


def vision_spec(folder: Path, *, steps: int = 1, **sources: Any) -> Any:
    """The toy spec reading the shapes in `folder` (source fields in `sources`), trained `steps` steps."""
    from tabula.schemas.spec import Spec

    raw = copy.deepcopy(SPEC)
    raw["data"]["sources"]["shapes"].update(paths=[str(folder)], **sources)
    tokens = steps * 8 * SEQ_LEN
    raw["train"]["budget"] = {"tokens": tokens}
    raw["train"]["eval"] = {"every_tokens": tokens, "tokens": 4 * 8 * SEQ_LEN, "sample": {"max_new_tokens": 0}}
    return Spec.model_validate(raw)
