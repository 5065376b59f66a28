"""Reading Hugging Face transformers checkpoints into tabula: the inverse of hf.py.

    model_from_hf_config(config, weights=PATH) -> dict        config.json -> the spec's `model:` section
    tabula_tensors(spec, names, read, config) -> iterator     their tensors -> (tabula name, tensor)

Each kind reads its own part (its HFMapping's `reads`, `read_config` and `tensors_from_hf`, next to
the export direction in the kind's module); this module asks the kinds, adds the model-wide fields
and gathers everything tabula cannot express into one ImportRefused, so a user sees every reason
at once. Nothing is approximated. Never imports transformers: `config` is the dict transformers'
AutoConfig gives (`to_dict()`, defaults filled) or a config.json read as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from typing import Any

import torch

from tabula.schemas.model import Model as ModelSpec

from tabula.schemas.registry import Registry

from .blocks import ATTENTION, MLP, NORM, POSITION
from .blocks.registry import BlockClass
from .hf import hf_modules
from .hf_mapping import HFConfig, HFMapping, ImportRefused, NoHF, UnmappedTensors

__all__ = ["ImportRefused", "importable_architectures", "architecture_of", "model_from_hf_config", "tabula_tensors"]

# The architecture a config names by its model_type when it lists no `architectures`.
ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

# (spec path, registry) of each part of the block a kind fills.
_PARTS = (("model.block.attention", ATTENTION), ("model.block.mlp", MLP), ("model.block.norm", NORM), ("model.position", POSITION))


def _readers(registry: Registry[BlockClass], architecture: str) -> list[HFMapping]:
    """The distinct mappings in `registry` that read `architecture`'s config (mha, gqa and mqa share one)."""
    found: list[HFMapping] = []
    for kind in registry:
        mapping = registry[kind].hf
        if isinstance(mapping, HFMapping) and architecture in mapping.reads and all(mapping is not m for m in found):
            found.append(mapping)
    return found


def importable_architectures() -> list[str]:
    """The architectures every part of a block has a kind to read."""
    mappings = [registry[kind].hf for _, registry in _PARTS for kind in registry]
    every = {a for mapping in mappings if isinstance(mapping, HFMapping) for a in mapping.reads}
    return sorted(a for a in every if all(_readers(registry, a) for _, registry in _PARTS))


def architecture_of(config: HFConfig) -> str | None:
    """The architecture a config names (its one `architectures` entry, else its model_type's)."""
    architectures = config.get("architectures") or []
    if len(architectures) == 1:
        return str(architectures[0])
    if not architectures:
        return ARCHITECTURE_OF_MODEL_TYPE.get(config.get("model_type", ""))
    return None


def model_from_hf_config(config: HFConfig, *, weights: str) -> dict[str, Any]:
    """The `model:` section (plain values, as a spec file writes them) reproducing `config`'s model,
    its weights to come from `weights` (model.init: {kind: from, path: weights}). Raises
    ImportRefused listing everything in the config tabula cannot express."""
    architecture = architecture_of(config)
    importable = importable_architectures()
    if architecture not in importable:
        named = config.get("architectures") or config.get("model_type")
        raise ImportRefused([f"config.json: architectures: {named}: tabula imports {', '.join(importable)}"])
    parts: dict[str, Any] = {}
    problems: list[str] = []
    for path, registry in _PARTS:
        (mapping,) = _readers(registry, architecture)
        parts[path], found = mapping.read_config(config, architecture)
        problems += found
    if problems:
        raise ImportRefused(problems)
    return {
        "vocab_size": config["vocab_size"],
        "d_model": config["hidden_size"],
        "n_layers": config["num_hidden_layers"],
        "max_seq_len": config["max_position_embeddings"],
        "position": parts["model.position"],
        "block": {"norm": parts["model.block.norm"], "attention": parts["model.block.attention"], "mlp": parts["model.block.mlp"]},
        "tie_embeddings": bool(config.get("tie_word_embeddings")),
        "init": {"kind": "from", "path": weights, "std": config.get("initializer_range", 0.02)},
    }


def _ignored(names: Collection[str], n_layers: int, config: HFConfig) -> set[str]:
    """Tensors transformers itself ignores when it loads the model: RoPE's inv_freq buffers (which
    older checkpoints saved) and DeepSeek-V3's multi-token-prediction layers after the last layer."""
    extra = config.get("num_nextn_predict_layers") or 0
    predicting = range(n_layers, n_layers + extra)
    layer = re.compile(r"^model\.layers\.(\d+)\.")
    return {name for name in names if name.endswith("rotary_emb.inv_freq")
            or ((match := layer.match(name)) is not None and int(match[1]) in predicting)}


def tabula_tensors(
    spec: ModelSpec, names: Collection[str], read: Callable[[str], torch.Tensor], config: HFConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """(tabula name, tensor) for a Hugging Face checkpoint holding the tensors `names`, read one module
    at a time through `read(name)` (so a large checkpoint is never all in memory): the embedding first,
    then the output head where the checkpoint has one, then module by module. `config` is its
    config.json (some layouts depend on it). After the last one, raises ImportRefused naming the
    tensors with no tabula name. Whether the tensors fit the model (shapes, ties) is the caller's check."""
    names = set(names)
    claimed = _ignored(names, spec.n_layers, config)
    problems: list[str] = []
    for theirs, ours in (("model.embed_tokens.weight", "embed.weight"), ("lm_head.weight", "lm_head.weight")):
        if theirs in names:
            claimed.add(theirs)
            yield ours, read(theirs)
    for ours, theirs, (path, kind, registered) in hf_modules(spec):
        below = sorted(name[len(theirs):] for name in names - claimed if name.startswith(theirs))
        if not below:
            continue
        claimed |= {theirs + name for name in below}
        if isinstance(registered.hf, NoHF):
            problems.append(f"{path}.kind: {registered.hf.reason}")
            continue
        try:
            tensors = registered.hf.tensors_from_hf(kind, {name: read(theirs + name) for name in below}, config)
        except UnmappedTensors as error:
            problems += [f"tensor {theirs}{name} has no tabula name" for name in error.names]
            continue
        for name, tensor in tensors.items():
            yield ours + name, tensor
    problems += [f"tensor {name} has no tabula name" for name in sorted(names - claimed)]
    if problems:
        raise ImportRefused(problems)
