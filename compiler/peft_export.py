"""A fine-tuned model's adapter in peft's own format, for the Hugging Face export of its base.

    peft_adapter(model_spec, finetune, model, **config) -> (peft config, {name: tensor})

What `peft.PeftModel.from_pretrained(base, folder)` reads: adapter_config.json (the config's
`save_pretrained`) and adapter_model.safetensors, keyed as peft saves them,
`base_model.model.<Hugging Face module>.lora_A.weight` (`lora_B.weight`, DoRA's
`lora_magnitude_vector`), or `prompt_embeddings` for prompt and prefix tuning. tabula's module names
become transformers' through the kinds' own mapping (compiler/hf.py `hf_linear`); a Hugging Face
linear that stacks several of tabula's by rows (DeepSeek-V3's kv_a_proj_with_mqa: MLA's kv_down and
k_rope) gets one adapter that is exactly theirs: A stacked, B block-diagonal (zero rows where a part
has none), the rank and alpha scaled alike so alpha / rank stays (rank_pattern, alpha_pattern),
DoRA's magnitude joined from each part's (a part without one keeps its rows' norms: unchanged).

peft's loader under transformers v5 reads some names as a mixture of experts' (for DeepSeek-V3: its
MLP's gate_proj, up_proj and down_proj, which it retargets to fused expert parameters even in a dense
layer): an adapter there would not load where it was trained, so such targets are refused with the
reason (`--format hf` merges them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from tabula.schemas.finetune import LOW_RANK

from .adapters import peft_config
from .hf import hf_architecture, hf_config, hf_linear
from .hf_mapping import ExportError

if TYPE_CHECKING:
    from tabula.schemas.finetune import Finetune
    from tabula.schemas.model import Model as ModelSpec

    from .model import Transformer

PREFIX = "base_model.model."  # where peft keeps the base model's modules in its state dict


def peft_adapter(model_spec: ModelSpec, finetune: Finetune, model: Transformer, **config: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """peft's config (with `config`: base_model_name_or_path ...; inference_mode set) and the adapter's
    tensors, named as peft saves them, for a model `apply_finetune` adapted (adapters unmerged). Raises
    ExportError for a method with no adapter (full) or a module with no Hugging Face name."""
    if finetune.kind in LOW_RANK:
        return _low_rank(model_spec, finetune, model, config)
    if model.virtual_tokens is not None:
        encoder = model.virtual_tokens.encoder
        with torch.no_grad():  # what the encoder computes (prefix tuning's projection included)
            prompt = encoder(torch.arange(model.virtual_tokens.n, device=model.embed.weight.device))
        return peft_config(finetune, model_spec, inference_mode=True, **config), {"prompt_embeddings": prompt.detach().float().cpu()}
    raise ExportError([f"train.finetune.kind: {finetune.kind} trains the model's own weights and has no adapter: export --format hf"])


def _low_rank(model_spec: ModelSpec, finetune: Any, model: Transformer, config: dict) -> tuple[Any, dict[str, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    by_hf: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name in layers:
        hf_name, parts = hf_linear(model_spec, name)
        by_hf[hf_name] = (name.rpartition(".")[0], parts)
    misread = sorted({hf_name.rpartition(".")[2] for hf_name in by_hf} & _read_as_experts(model_spec))
    if misread:
        raise ExportError([f"train.finetune.targets: peft {_peft_version()} loads adapters on {hf_architecture(model_spec)}'s "
                           f"{', '.join(misread)} into its fused experts' weights (a transformers v5 conversion), not where "
                           "they were trained: export this run with --format hf (merged), or target attention only"])
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern, alpha_pattern = {}, {}
    for hf_name, (parent, parts) in by_hf.items():
        names = [f"{parent}.{part}" if parent else part for part in parts]
        adapted = [layers.get(name) for name in names]
        A, B, magnitude = _stack(model, names, adapted, finetune.kind == "dora")
        key = PREFIX + hf_name
        tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = A, B
        if magnitude is not None:
            tensors[key + ".lora_magnitude_vector"] = magnitude
        k = sum(layer is not None for layer in adapted)
        if k > 1:  # k adapters side by side: rank k r, alpha scaled so that the scale stays alpha / r (alpha / sqrt r)
            rank_pattern[hf_name] = k * finetune.rank
            alpha_pattern[hf_name] = finetune.alpha * (math.sqrt(k) if finetune.rslora else k)
    lora = peft_config(finetune, targets=sorted(by_hf), inference_mode=True, task_type="CAUSAL_LM",
                       rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **config)
    return lora, tensors


def _read_as_experts(model_spec: ModelSpec) -> set[str]:
    """The module names peft's loader retargets to fused experts for this architecture (none where it
    does not, or where this peft has no such conversion)."""
    try:
        from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_TARGET_MODULE_MAPPING
    except ImportError:
        return set()
    model_type = hf_config(model_spec, 1)["model_type"]
    return set(_MOE_TARGET_MODULE_MAPPING.get(_MODEL_TO_CONVERSION_PATTERN.get(model_type, ""), {}))


def _peft_version() -> str:
    import peft

    return peft.__version__


def _stack(model: Transformer, names: list[str], adapted: list, dora: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One adapter (A, B, DoRA's magnitude) for the rows of `names` stacked in order; `adapted[i]` is the
    LoRA layer of names[i], or None where that part has no adapter."""
    A_parts, B_rows, magnitudes = [], [], []
    rank = 0
    for name, layer in zip(names, adapted):
        if layer is None:
            weight = model.get_submodule(name).weight
            B_rows.append((weight.shape[0], None))
            magnitudes.append(weight.detach().float().norm(dim=1))  # DoRA: m = ||W|| leaves these rows as they are
            continue
        A_parts.append(layer.lora_A["default"].weight.detach().float())
        B = layer.lora_B["default"].weight.detach().float()
        B_rows.append((B.shape[0], (rank, B)))
        rank += B.shape[1]
        if dora:
            magnitudes.append(layer.lora_magnitude_vector["default"].weight.detach().float())
    A = torch.cat(A_parts, dim=0)  # (k r, in)
    B = torch.zeros(sum(rows for rows, _ in B_rows), rank, dtype=A.dtype, device=A.device)  # (out, k r): block diagonal
    row = 0
    for rows, placed in B_rows:
        if placed is not None:
            column, block = placed
            B[row:row + rows, column:column + block.shape[1]] = block
        row += rows
    magnitude = torch.cat(magnitudes).cpu() if dora else None
    return A.contiguous().cpu(), B.contiguous().cpu(), magnitude
