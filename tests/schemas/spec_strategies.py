"""Hypothesis strategies for valid specs, and a YAML writer that spells the same spec many ways
(key order, flow or block style, quoting, comments, `64k` or `65536`, `1e-3` or `0.001`, `5%`
or `0.05`): the canonical form and the hash must not see any of it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Tok:
    """A token count, which the writer may spell 65536, 64k or 0.0625M."""

    n: int


@dataclass(frozen=True)
class Pct:
    """A fraction given in whole percents, spelled 0.05 or 5%."""

    percent: int


NICE_FLOATS = [1e-3, 3e-4, 2.5e-4, 6e-4, 1e-2, 0.1]


@st.composite
def spec_data(draw) -> dict:
    """The data of a valid spec (Tok and Pct where the writer may respell a quantity)."""
    n_heads = draw(st.sampled_from([1, 2, 4, 8]))
    head = draw(st.sampled_from([8, 16, 32]))
    d_model = n_heads * head
    max_seq_len = draw(st.sampled_from([64, 128, 256]))
    kind = draw(st.sampled_from(["mha", "gqa", "mqa", "mla"]))
    attention: dict[str, Any] = {"kind": kind, "n_heads": n_heads}
    if kind == "gqa":
        attention["n_kv_heads"] = draw(st.sampled_from([d for d in (1, 2, 4, 8) if n_heads % d == 0]))
    if kind == "mla":
        attention.update(kv_latent=draw(st.sampled_from([16, 32])), rope_head_dim=4)
        if draw(st.booleans()):
            attention["q_latent"] = 24
    if draw(st.booleans()):
        attention["window"] = draw(st.sampled_from([16, 32]))
    model: dict[str, Any] = {
        "d_model": d_model, "n_layers": draw(st.integers(1, 6)), "max_seq_len": max_seq_len,
        "block": {
            "norm": {"kind": draw(st.sampled_from(["rmsnorm", "layernorm"])), "eps": draw(st.sampled_from([1e-5, 1e-6]))},
            "attention": attention,
            "mlp": {"kind": draw(st.sampled_from(["gelu", "swiglu"])), "hidden": 4 * d_model},
        },
    }
    if draw(st.booleans()):
        model["tie_embeddings"] = draw(st.booleans())
    if draw(st.booleans()):
        model["position"] = {"kind": "rope", "theta": draw(st.sampled_from([10000, 500000.0]))}

    names = draw(st.lists(st.sampled_from(["web", "code", "books", "stdlib"]), min_size=1, max_size=3, unique=True))
    sources = {name: ({"kind": "python_stdlib"} if name == "stdlib" else {"kind": "files", "paths": [f"{name}/**/*.txt"]})
               for name in names}
    ends = sorted(draw(st.sets(st.integers(1, 64), min_size=0, max_size=2)))
    stages: list[dict[str, Any]] = [{"until_tokens": Tok(end * 2**15)} for end in ends] + [{}]
    for stage in stages:
        if draw(st.booleans()):
            stage["seq_len"] = draw(st.sampled_from([s for s in (32, 64, 128, 256) if s <= max_seq_len]))
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
            stage["mix"] = {name: draw(st.sampled_from([0.5, 1.0, 2, 3.0])) for name in chosen}
    data: dict[str, Any] = {
        "tokenizer": {"kind": "bpe", "vocab_size": draw(st.sampled_from([512, 1024, 8192])), "max_chars": Tok(2**20)},
        "sources": sources,
        "curriculum": stages,
        "validation": {"fraction": Pct(draw(st.sampled_from([1, 2, 5])))},
    }
    if draw(st.booleans()):
        data["filters"] = [{"kind": "length", "min_chars": 64}, {"kind": "dedup", "method": "exact"}]

    schedule = draw(st.sampled_from([
        {"kind": "cosine", "warmup": Pct(2), "min_lr_ratio": Pct(10)},
        {"kind": "wsd", "warmup": Pct(5), "decay": Pct(20)},
        {"kind": "constant"},
    ]))
    optimizer = draw(st.sampled_from([
        {"kind": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.1},
        {"kind": "lion"},
        {"kind": "sgd", "momentum": 0.9},
    ]))
    optimizer = {**optimizer, "lr": draw(st.sampled_from(NICE_FLOATS))}
    train: dict[str, Any] = {
        "batch_tokens": Tok(draw(st.sampled_from([4096, 16384, 65536]))),
        "optimizer": optimizer,
        "schedule": schedule,
        "budget": {"tokens": Tok(draw(st.sampled_from([2**20, 3 * 2**20, 10 * 2**20])))},
    }
    if draw(st.booleans()):
        train["eval"] = {"every_tokens": Tok(2**18), "tokens": Tok(2**15)}
    spec: dict[str, Any] = {"name": draw(st.sampled_from(["tiny", "exp-1", "run_2.b"])), "model": model, "data": data, "train": train}
    if draw(st.booleans()):
        spec["seed"] = draw(st.integers(0, 2**31))
    if draw(st.booleans()):
        spec["parallel"] = draw(st.sampled_from([
            {"backend": "local", "precision": "fp32"},
            {"backend": "deepspeed", "world_size": 2, "zero": {"stage": 2, "offload_optimizer": True}},
            {"backend": "deepspeed", "world_size": 4, "zero": {"stage": 3, "offload_params": True}},
        ]))
    if draw(st.booleans()):
        spec["track"] = {"tags": draw(st.lists(st.sampled_from(["a", "b c", "yes", "1e3", "x: y"]), max_size=3))}
    return spec


# ---------------------------------------------------------------- writing one spec many ways


def plain(value: Any) -> Any:
    """The data with Tok and Pct replaced by their plainest spelling."""
    if isinstance(value, Tok):
        return value.n
    if isinstance(value, Pct):
        return value.percent / 100
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def write_yaml(data: Any, seed: int) -> str:
    """`data` as YAML text, spelled according to `seed`: same spec, different text."""
    rng = random.Random(seed)
    lines: list[str] = []
    if rng.random() < 0.5:
        lines.append("# a spec written by the property tests")
    _block(data, 0, lines, rng)
    return "\n".join(lines) + "\n"


def _block(data: dict, indent: int, lines: list[str], rng: random.Random, comments: bool = True) -> None:
    pad = " " * indent
    keys = list(data)
    rng.shuffle(keys)
    for key in keys:
        value = data[key]
        if comments and rng.random() < 0.1:
            lines.append(f"{pad}# about {key}")
        comment = "  # note" if rng.random() < 0.2 else ""
        if isinstance(value, dict) and value and rng.random() < 0.7:
            lines.append(f"{pad}{_key(key, rng)}:{comment}")
            _block(value, indent + 2, lines, rng)
        elif isinstance(value, list) and value and all(isinstance(item, dict) and item for item in value) and rng.random() < 0.7:
            lines.append(f"{pad}{_key(key, rng)}:{comment}")
            for item in value:
                start = len(lines)
                _block(item, indent + 4, lines, rng, comments=False)  # the first line carries the dash
                lines[start] = f"{pad}  - {lines[start][indent + 4:]}"
        else:
            lines.append(f"{pad}{_key(key, rng)}: {_flow(value, rng)}{comment}")


def _flow(value: Any, rng: random.Random) -> str:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return "{" + ", ".join(f"{_key(key, rng)}: {_flow(value[key], rng)}" for key in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item, rng) for item in value) + "]"
    if isinstance(value, Tok):
        spellings = [str(value.n), json.dumps(str(value.n))]
        if value.n % 2**10 == 0:
            spellings.append(f"{value.n // 2**10}k")
        if value.n % 2**20 == 0:
            spellings.append(f"{value.n // 2**20}M")
        if value.n % 2**18 == 0:
            spellings.append(f"{value.n / 2**20}M")
        return rng.choice(spellings)
    if isinstance(value, Pct):
        return rng.choice([repr(value.percent / 100), f"{value.percent}%", f"'{value.percent}%'"])
    if isinstance(value, bool):
        return rng.choice(["true", "True", "TRUE"] if value else ["false", "False"])
    if isinstance(value, float):
        text = repr(value)
        spellings = [text, format(Decimal(text), "e"), format(Decimal(text), "E")]
        if value.is_integer():
            spellings.append(str(int(value)))
        return rng.choice(spellings)
    if isinstance(value, int):
        return rng.choice([str(value), f"+{value}"]) if value >= 0 else str(value)
    if value is None:
        return rng.choice(["null", "~", "Null"])
    return _string(str(value), rng)


def _key(key: str, rng: random.Random) -> str:
    return _string(key, rng) if rng.random() < 0.8 else json.dumps(key)


def _string(text: str, rng: random.Random) -> str:
    quoted = [json.dumps(text), "'" + text.replace("'", "''") + "'"]
    safe = text.replace("_", "a").replace("-", "a").replace(".", "a").replace("/", "a").replace("*", "a")
    if safe.isalnum() and not text[0].isdigit() and "*" not in text and text.lower() not in ("null", "true", "false", "yes", "no"):
        return rng.choice([text, *quoted])
    return rng.choice(quoted)


def split_for_extends(data: dict, seed: int) -> tuple[dict, dict]:
    """(base, child) such that child deep-merged over base is `data`; the base also carries
    decoy values that the child overrides."""
    rng = random.Random(seed)
    base: dict[str, Any] = {"name": "decoy-base"}
    child: dict[str, Any] = {}
    for key, value in data.items():
        choice = rng.random()
        if isinstance(value, dict) and value and choice < 0.4:
            inner = list(value)
            cut = rng.randint(0, len(inner))
            base[key] = {name: value[name] for name in inner[:cut]}
            child[key] = {name: value[name] for name in inner[cut:]}
            if key == "model":
                base[key]["n_layers"] = 99  # overridden by the child below when it sets it
                child[key]["n_layers"] = value["n_layers"]
        elif choice < 0.7 and key != "name":
            base[key] = value
        else:
            child[key] = value
    child.setdefault("name", data["name"])
    return base, child
