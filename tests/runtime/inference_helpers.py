"""Tiny models and a byte tokenizer for the inference tests (runtime/inference)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from tabula.compiler import build_model
from tabula.schemas.spec import Spec

EOS = "<|endoftext|>"

BASE: dict[str, Any] = {
    "name": "tiny-infer",
    "seed": 7,
    "model": {
        "vocab_size": 257,
        "d_model": 32,
        "n_layers": 2,
        "max_seq_len": 96,
        "position": {"kind": "rope", "theta": 10000.0},
        "block": {
            "norm": {"kind": "rmsnorm", "eps": 1e-5},
            "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
            "mlp": {"kind": "swiglu", "hidden": 64},
        },
        "tie_embeddings": True,
    },
    "data": {
        "tokenizer": {"kind": "file", "path": "tokenizer.json", "eos_token": EOS, "pad_token": EOS},
        "sources": {"text": {"kind": "python_stdlib"}},
        "curriculum": [{"seq_len": 8, "mix": {"text": 1.0}}],
    },
    "train": {"batch_tokens": 64, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 1024}},
}

# Every attention kind, each with what makes its cache differ (biases, QK-norm, a window, latents).
ATTENTION: dict[str, dict[str, Any]] = {
    "mha": {"kind": "mha", "n_heads": 4, "bias": {"o": True}, "qk_norm": True},
    "gqa": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "bias": True},
    "mqa": {"kind": "mqa", "n_heads": 4},
    "window": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 8},
    "mla": {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 16, "rope_head_dim": 4, "latent_norm": True, "bias": True},
    "mla-qk-norm": {"kind": "mla", "n_heads": 4, "kv_latent": 16, "rope_head_dim": 4, "v_head_dim": 12, "qk_norm": True,
                    "bias": {"o": True, "kv_up": True}},
}


def spec_dict(attention: str = "gqa", **model: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["model"]["block"]["attention"] = copy.deepcopy(ATTENTION[attention])
    for key, value in model.items():
        if key == "block":
            raw["model"]["block"].update(value)
        else:
            raw["model"][key] = value
    return raw


def tiny_model(attention: str = "gqa", seed: int = 3, **model: Any) -> torch.nn.Module:
    """A seeded tiny model of the attention kind, in eval mode, on the CPU."""
    return build_model(Spec.model_validate(spec_dict(attention, **model))).materialize("cpu", seed).eval()


def byte_tokenizer() -> Any:
    """A byte-level tokenizer: one token a byte (ids 0..255), and the end-of-text token (256). A character
    of several UTF-8 bytes is several tokens, so streams must join them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in zip(range(256), _byte_chars())}
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {byte_to_char[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def spec_file(folder: Path, attention: str = "gqa") -> Path:
    """A spec file (JSON is YAML) beside its byte tokenizer.json; returns its path."""
    import json

    byte_tokenizer().save(str(folder / "tokenizer.json"))
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(spec_dict(attention)), encoding="utf-8")
    return path
