"""Mapping tabula models to Hugging Face transformers' formats (config.json + state dict).

    Llama    mha / gqa / mqa, rope, rmsnorm, swiglu, attention biases on all four projections or none
    Mistral  the same with a sliding window and no biases
    Qwen2    the same with biases on q, k and v only (and a window on every layer or none)
    Mixtral  mha / gqa / mqa (no biases) with a moe MLP (softmax router, no shared experts)
    DeepSeek-V3  mla with latent_norm, rope, rmsnorm, swiglu or moe (sigmoid router, shared experts),
             dense first layers (a model.layers pattern) then MoE layers
    Mamba    every layer a mamba block without MLP, no positions, rmsnorm (compiler/hf_mamba.py)

Each kind says how it maps in its own module (its class's `hf`: an HFMapping, or NoHF; see
hf_mapping.py); this module asks the model's kinds and assembles their answers: the attention
kind picks the architecture, every kind names what in its spec does not map (`hf_problems`, one
line per field), adds its config.json keys and names its tensors there. It never imports
transformers: it builds plain dicts and tensors (write_hf saves them with safetensors). The way
back (config.json -> spec, their tensors -> tabula's names) is compiler/hf_import.py, over the
same kinds and the same module table (`hf_modules`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tabula.schemas.model import Model as ModelSpec

from . import hf_mamba
from .blocks import ATTENTION, BLOCK, MLP, NORM, POSITION
from .blocks.registry import BlockClass
from .hf_mapping import ExportError, HFMapping, NoHF

__all__ = ["ExportError", "hf_notes", "hf_modules", "hf_architecture", "hf_problems", "hf_config", "hf_state_dict", "hf_linear", "special_token_ids", "write_hf"]


def _block_kinds(path: str, block: Any) -> list[tuple[str, Any, BlockClass]]:
    """(spec path, kind spec, registered class) of the kinds a layer's block is made of: a transformer
    block's attention, MLP and norm; a block kind without those parts maps through its own class."""
    if not all(hasattr(block, part) for part in ("attention", "mlp", "norm")):
        return [(path, block, BLOCK[block.kind])]
    return [(f"{path}.attention", block.attention, ATTENTION[block.attention.kind]), (f"{path}.mlp", block.mlp, MLP[block.mlp.kind]),
            (f"{path}.norm", block.norm, NORM[block.norm.kind])]


def _distinct_blocks(spec: ModelSpec) -> list[tuple[str, Any]]:
    """(spec path, block) of model.block and of each model.layers override."""
    return [("model.block", spec.block)] + [(f"model.layers.{j}.block", o.block) for j, o in enumerate(spec.layers)]


def _kinds(spec: ModelSpec) -> list[tuple[str, Any, BlockClass]]:
    """(spec path, kind spec, registered class) of each kind the model is made of: model.block's, the
    position's, then each layer override's."""
    (path, block), *overrides = _distinct_blocks(spec)
    kinds = _block_kinds(path, block) + [("model.position", spec.position, POSITION[spec.position.kind])]
    for path, block in overrides:
        kinds += _block_kinds(path, block)
    return kinds


def hf_modules(spec: ModelSpec) -> list[tuple[str, str, tuple[str, Any, BlockClass]]]:
    """(tabula module prefix, Hugging Face module prefix, (spec path, kind spec, class)) of every
    module below the embedding: the one table both directions map through. Each layer maps through
    its own block's kinds."""
    position = ("model.position", spec.position, POSITION[spec.position.kind])
    norm = _block_kinds("model.block", spec.block)[-1]
    modules = [("pos_embed.", "model.pos_embed.", position), ("norm.", "model.norm.", norm)]
    for i, block in enumerate(spec.layer_blocks):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        kinds = _block_kinds(spec.block_path(i), block)
        if len(kinds) == 1:
            modules.append((ours, theirs, kinds[0]))
            continue
        attention, mlp, norm_i = kinds
        modules += [(ours + "attn_norm.", theirs + "input_layernorm.", norm_i), (ours + "attn.", theirs + "self_attn.", attention),
                    (ours + "mlp_norm.", theirs + "post_attention_layernorm.", norm_i), (ours + "mlp.", theirs + "mlp.", mlp)]
    return modules


def _pattern_problems(spec: ModelSpec, architecture: str) -> list[str]:
    """What a layer pattern varies that `architecture` keeps the same on every layer: the attention and
    norm always; the MLP too, except DeepSeek-V3's dense first layers before its mixture-of-experts ones."""
    problems = []
    (_, first), *overrides = _distinct_blocks(spec)
    for path, block in overrides:
        for part in ("attention", "norm"):
            if getattr(block, part, None) != getattr(first, part, None):
                problems.append(f"{path}.{part}: {architecture} has one {part} on every layer; this layer pattern varies it")
    mlps = [getattr(block, "mlp", None) for block in spec.layer_blocks]
    sparse = [getattr(mlp, "kind", None) == "moe" for mlp in mlps]
    dense_first = architecture == "DeepseekV3ForCausalLM" and sparse == sorted(sparse)  # dense layers, then MoE ones
    groups = ([mlp for mlp, moe in zip(mlps, sparse) if not moe], [mlp for mlp, moe in zip(mlps, sparse) if moe]) if dense_first else (mlps,)
    if any(mlp != group[0] for group in groups for mlp in group):
        where = "its dense first layers, then its mixture-of-experts layers, each" if architecture == "DeepseekV3ForCausalLM" else "every layer"
        problems.append(f"model.layers: {architecture} has one MLP on {where}; this layer pattern varies it")
    return problems


def _mapping(path: str, registered: BlockClass) -> HFMapping:
    """The kind's mapping; ExportError (naming the kind's path) where it has none."""
    if isinstance(registered.hf, NoHF):
        raise ExportError([f"{path}.kind: {registered.hf.reason}"])
    return registered.hf


def hf_architecture(spec: ModelSpec) -> str:
    """The architecture the attention kind implies (LlamaForCausalLM, MistralForCausalLM,
    Qwen2ForCausalLM, DeepseekV3ForCausalLM; MambaForCausalLM for a Mamba model). Raises ExportError when the
    attention kind has no equivalent."""
    if hf_mamba.is_mamba(spec):
        return hf_mamba.ARCHITECTURE
    hybrid = hf_mamba.hybrid_problem(spec)
    if hybrid is not None:
        raise ExportError([hybrid])
    path, attention, registered = _kinds(spec)[0]
    architecture = _mapping(path, registered).architecture(attention, spec)
    if architecture is None:
        raise ExportError([f"{path}.kind: {attention.kind} implies no Hugging Face architecture"])
    for path, kind, registered in _kinds(spec):  # an MLP kind may imply one of its own (a mixture of experts: Mixtral)
        if path.endswith(".mlp") and not isinstance(registered.hf, NoHF):
            architecture = registered.hf.architecture(kind, spec) or architecture
    return architecture


def hf_problems(spec: ModelSpec) -> list[str]:
    """What in the model graph has no Hugging Face equivalent, as 'model.<path>: why' lines."""
    if hf_mamba.is_mamba(spec):
        return hf_mamba.problems(spec)
    try:
        architecture = hf_architecture(spec)
    except ExportError as error:
        return error.problems
    problems = _pattern_problems(spec, architecture)
    for path, kind, registered in _kinds(spec):
        if isinstance(registered.hf, NoHF):
            problems.append(f"{path}.kind: {registered.hf.reason}")
        else:
            problems += registered.hf.problems(kind, spec, architecture, path)
    return problems


def hf_config(spec: ModelSpec, vocab_size: int, *, bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """config.json contents for the model. Raises ExportError where the graph does not map."""
    if hf_mamba.is_mamba(spec):
        return hf_mamba.config(spec, vocab_size, {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id})
    problems = hf_problems(spec)
    if problems:
        raise ExportError(problems)
    architecture = hf_architecture(spec)
    config: dict[str, Any] = {
        "architectures": [architecture],
        "vocab_size": vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "max_position_embeddings": spec.max_seq_len,
        "initializer_range": spec.init.std,
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    # kinds that imply the architecture (a mixture of experts) last: their keys win over a dense layer's
    kinds = sorted(_kinds(spec), key=lambda k: k[0].endswith(".mlp") and _mapping(k[0], k[2]).architecture(k[1], spec) is not None)
    for path, kind, registered in kinds:
        config |= _mapping(path, registered).config(kind, spec, architecture)
    return config


def hf_linear(spec: ModelSpec, name: str) -> tuple[str, tuple[str, ...]]:
    """Where tabula's linear module `name` (blocks.0.attn.q_proj, lm_head) is in the Hugging Face
    model: (its module name there, the tabula children stacked in it by rows, in order; one for a
    one-to-one module: ("model.layers.0.self_attn.q_proj", ("q_proj",))). ExportError where it has none."""
    if name == "lm_head":
        return "lm_head", ("lm_head",)
    for ours, theirs, (path, kind, registered) in hf_modules(spec):
        child = name[len(ours):]
        if not name.startswith(ours) or "." in child:
            continue
        mapping = _mapping(path, registered)
        if child in mapping.renames:
            return theirs + mapping.renames[child], (child,)
        for stacked, parts in mapping.stacked.items():
            if child in parts:
                return theirs + stacked, parts
    raise ExportError([f"module {name} has no Hugging Face name"])


def hf_state_dict(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tabula's state dict (names as in compiler/model.py) renamed and reshaped for hf_config's
    architecture, each kind naming its module's tensors. Tensors are made contiguous and never
    shared (safetensors refuses aliases)."""
    if hf_mamba.is_mamba(spec):
        return hf_mamba.state_dict(spec, state)
    modules = hf_modules(spec)
    out = {"model.embed_tokens.weight": state["embed.weight"]}
    if not spec.tie_embeddings:  # tied, transformers ties it to the embedding itself
        out["lm_head.weight"] = state["lm_head.weight"]
    claimed = {"embed.weight", "lm_head.weight"} | {name for name in state if name.startswith("vision.")}  # hf_notes
    for ours, theirs, (path, kind, registered) in modules:
        tensors = {name[len(ours):]: tensor for name, tensor in state.items() if name.startswith(ours)}
        if tensors:
            claimed |= {ours + name for name in tensors}
            out |= {theirs + name: tensor for name, tensor in _mapping(path, registered).tensors(kind, tensors).items()}
    unnamed = sorted(set(state) - claimed)
    if unnamed:
        raise ExportError([f"parameter {name} has no Hugging Face name" for name in unnamed])
    return {name: tensor.detach().clone().contiguous() for name, tensor in out.items()}


def hf_notes(spec: ModelSpec) -> list[str]:
    """What an export leaves out, one line each: model.vision's image encoder (a causal LM has no place for it)."""
    if spec.vision is None:
        return []
    return ["the image encoder and projector (model.vision) are not exported: the files hold the language model only, "
            f"which reads text; its image token {spec.vision.image_token!r} stays in the tokenizer"]


def special_token_ids(tokenizer_json: dict[str, Any], names: dict[str, str]) -> dict[str, int | None]:
    """The ids of special tokens (e.g. {"eos_token_id": "<|endoftext|>"}) in a parsed tokenizer.json;
    None for a token it does not have."""
    ids = {token["content"]: token["id"] for token in tokenizer_json.get("added_tokens", [])}
    vocab = tokenizer_json.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        ids = {**vocab, **ids}
    return {field: ids.get(token) for field, token in names.items()}


def write_hf(
    out_dir: str | os.PathLike[str],
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    vocab_size: int,
    *,
    tokenizer_json: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
) -> list[str]:
    """Writes config.json, model.safetensors and, given a tokenizer.json text, the tokenizer
    files into `out_dir` so that transformers' AutoModelForCausalLM / AutoTokenizer
    .from_pretrained(out_dir) load them offline. Returns the file names written.
    Raises ExportError (before writing anything) where the graph does not map."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer_json is not None:
        names = {"eos_token_id": eos_token, "pad_token_id": pad_token}
        ids |= special_token_ids(json.loads(tokenizer_json), {k: v for k, v in names.items() if v is not None})
    config = hf_config(spec, vocab_size, **ids)
    tensors = hf_state_dict(spec, state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({name: t.float().cpu() for name, t in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    written = ["config.json", "model.safetensors"]
    if tokenizer_json is not None:
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": spec.max_seq_len}
        found = {"eos_token": (eos_token, ids["eos_token_id"]), "pad_token": (pad_token, ids["pad_token_id"])}
        tokenizer_config |= {name: token for name, (token, token_id) in found.items() if token_id is not None}
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        written += ["tokenizer.json", "tokenizer_config.json"]
    return written
