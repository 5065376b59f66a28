"""What a checkpoint stores of a fine-tuned model: the trained parameters alone, when a fine-tuning method
(train.finetune, compiler/adapters.py) froze the rest, with the method and the frozen base's fingerprint in the
weights file's metadata. The base is not repeated in every checkpoint: it comes from the spec (its seed, its
weights' source), rebuilt the same way by a resume, `tabula.load_model` and `tabula export`, and checked
against the fingerprint before the trained parameters are loaded over it (runtime/checkpoint.py load_weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

FINETUNE_METADATA = "finetune"  # the safetensors metadata entry of a checkpoint holding trained parameters alone


def applied(model: torch.nn.Module) -> Any:
    """What apply_finetune recorded on `model` (compiler/adapters.py `Applied`), or None: no method touched it,
    or it is not a tabula Transformer (an engine may run any module)."""
    return getattr(model, "finetune", None)


def saved_names(model: torch.nn.Module) -> set[str] | None:
    """The parameter names a checkpoint of `model` stores: None for the whole state dict; the trainable
    parameters' when a fine-tuning method froze the rest (compiler/adapters.py `Applied`)."""
    record = applied(model)
    if record is None or not record.trainable_only:
        return None
    return {name for name, param in model.named_parameters() if param.requires_grad}


def weights_metadata(model: torch.nn.Module) -> dict[str, str]:
    """The metadata a checkpoint's weights carry: the fine-tuning method and its frozen base's fingerprint
    when the weights are the trained parameters alone; else nothing."""
    record = applied(model)
    if record is None or not record.trainable_only:
        return {}
    return {FINETUNE_METADATA: json.dumps({"method": record.method, "base": record.base})}


def finetune_record(path: Path) -> dict[str, Any] | None:
    """{"method", "base"} of a fine-tuning checkpoint's weights file, or None for whole weights."""
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(FINETUNE_METADATA)
    return json.loads(text) if text else None


def check_finetune(model: torch.nn.Module, path: Path) -> None:
    """CheckpointError unless the weights file `path` and `model` agree on the fine-tuning method and on the
    frozen base (the same base parameters, the same values): the checkpoint holds the trained parameters
    alone, and continuing them over another base would not be the run that wrote them."""
    from tabula.compiler.adapters import same_base

    from .checkpoint import CheckpointError

    record, ours_record = finetune_record(path), applied(model)
    ours = ours_record.method if ours_record is not None and ours_record.trainable_only else None
    theirs = record["method"] if record else None
    if ours != theirs:
        said = {None: "whole weights (no frozen base)"}
        raise CheckpointError(f"{path} holds {said.get(theirs, f'{theirs} weights over a frozen base')}, but the model is "
                              f"{said.get(ours, f'{ours} over a frozen base')}: train.finetune changed")
    if record is None:
        return
    differ = same_base(record["base"], ours_record.base)
    if differ:
        raise CheckpointError(f"{path} was trained over other base weights than this spec builds ({len(differ)} tensors differ: "
                              f"{', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}): the seed or the base's weights "
                              "changed since; resume it with the spec it was trained with")
