"""A model whose every layer is a Mamba block, as transformers' MambaForCausalLM.

    embed.weight                 backbone.embeddings.weight
    blocks.{i}.norm.weight       backbone.layers.{i}.norm.weight
    blocks.{i}.mixer.*           backbone.layers.{i}.mixer.*   (the mixer's own names: compiler/blocks/mamba.py)
    norm.weight                  backbone.norm_f.weight
    lm_head.weight               lm_head.weight                (untied only)

compiler/hf.py hands a Mamba model here; like it, this module builds plain dicts and tensors and
never imports transformers.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from tabula.schemas.model import MambaBlock
from tabula.schemas.model import Model as ModelSpec

from .blocks.mamba import Mixer
from .hf_mapping import ExportError

ARCHITECTURE = "MambaForCausalLM"


def is_mamba(spec: ModelSpec) -> bool:
    """Whether every layer is a Mamba block (the model maps to MambaForCausalLM, if anything)."""
    return all(block.kind == "mamba" for block in spec.layer_blocks)


def hybrid_problem(spec: ModelSpec) -> str | None:
    """Why a model mixing Mamba and attention layers does not export (None: it does not mix them)."""
    kinds = {block.kind for block in spec.layer_blocks}
    if "mamba" in kinds and len(kinds) > 1:
        return "model.layers: a model mixing Mamba and attention layers has no Hugging Face export here (Jamba's layout is not mapped)"
    return None


def _blocks(spec: ModelSpec) -> dict[str, Any]:
    """Each distinct block the layers use, by its spec path."""
    return {spec.block_path(i): block for i, block in enumerate(spec.layer_blocks)}


def problems(spec: ModelSpec) -> list[str]:
    """What in a Mamba model does not map to MambaForCausalLM, as 'model.<path>: why' lines."""
    found = []
    if spec.position.kind != "none":
        found.append(f"model.position.kind: {ARCHITECTURE} has no positions; set position kind none")
    blocks = _blocks(spec)
    for path, block in blocks.items():
        if block.norm.kind != "rmsnorm":
            found.append(f"{path}.norm.kind: {ARCHITECTURE}'s norms are RMSNorm")
        if block.mlp is not None:
            found.append(f"{path}.mlp: {ARCHITECTURE}'s layers have no MLP (Jamba's have one); set mlp: null")
        found += Mixer.hf.problems(block.mixer, spec, ARCHITECTURE, f"{path}.mixer")
    if len({(block.mixer, block.norm) for block in blocks.values()}) > 1:
        found.append(f"model.layers: {ARCHITECTURE} has one mixer and norm for every layer; these layers differ")
    return found


def config(spec: ModelSpec, vocab_size: int, ids: dict[str, int | None]) -> dict[str, Any]:
    """config.json contents (ExportError where the model does not map)."""
    found = problems(spec)
    if found:
        raise ExportError(found)
    block = cast(MambaBlock, spec.block)  # every layer is (problems() refused the rest)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "mamba",
        "vocab_size": vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "layer_norm_epsilon": block.norm.eps,
        "initializer_range": spec.init.std,
        "tie_word_embeddings": spec.tie_embeddings,
        "residual_in_fp32": True,
        "torch_dtype": "float32",
        "use_cache": True,
        **ids,
        **Mixer.hf.config(block.mixer, spec, ARCHITECTURE),
    }


def state_dict(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tabula's state dict by MambaForCausalLM's names (a tied head is transformers' to tie)."""
    out = {}
    for name, tensor in state.items():
        if name == "embed.weight":
            out["backbone.embeddings.weight"] = tensor
        elif name == "norm.weight":
            out["backbone.norm_f.weight"] = tensor
        elif name == "lm_head.weight":
            if not spec.tie_embeddings:
                out[name] = tensor
        elif name.startswith("blocks."):
            _, layer, module, rest = name.split(".", 3)
            if module == "mixer":
                [(theirs, tensor)] = Mixer.hf.tensors(cast(MambaBlock, spec.block).mixer, {rest: tensor}).items()
                out[f"backbone.layers.{layer}.mixer.{theirs}"] = tensor
            elif module == "norm":
                out[f"backbone.layers.{layer}.norm.{rest}"] = tensor
            else:
                raise ExportError([f"parameter {name} has no Hugging Face name"])
        else:
            raise ExportError([f"parameter {name} has no Hugging Face name"])
    return {name: tensor.detach().clone().contiguous() for name, tensor in out.items()}
