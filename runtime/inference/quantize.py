"""Weight-only quantization of a loaded model for inference, through torchao.

    result = quantize_model(model, "int8")                  # per-row int8, every Linear
    result = quantize_model(model, "int4", group_size=32)   # group-wise int4
    result.weight_bytes, result.fp_weight_bytes             # memory of the weights after and before

Which torchao workflow and why (torchao 0.18, torch 2.13):
- int8: `Int8WeightOnlyConfig` (symmetric, one scale per output row, or per `group_size` inputs): an int8
  tensor beside its scales, on the CPU and on CUDA.
- int4: `IntxWeightOnlyConfig(weight_dtype=getattr(torch, "int4"), granularity=PerGroup(group_size))  # torch.int4: missing from torch's stubs`: int4 values
  (-8..7) with one scale per group, computed by dequantising and a float matmul, on any device. Its values
  are stored one a byte (torchao's `unpacked_to_int8` layout), so its memory is int8's, not half of it.
  torchao's packed int4 (`Int4WeightOnlyConfig`) cannot run here: its `plain` and `preshuffled` layouts
  need the `mslk` CUDA kernels, `plain_int32` has no CPU kernel, and `tile_packed_to_4d` (tinygemm) takes
  bf16 weights only (50-100x slower than fp32 on a CPU without AVX-512). PyTorch's own packed CPU kernel
  (`aten._weight_int4pack_mm_for_cpu`) ran a 1024x1024 product ~15x slower than fp32 on this machine's AVX2 CPU.

Only `nn.Linear` weights are quantized; embeddings and norms stay as they are. A head tied to the embedding
stays tied and unquantized (quantizing it would keep a float copy for the embedding beside a quantized one).
Quantization changes the model in place and cannot be undone: load the model again for float weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RunInputError

QUANTIZATIONS = ("int8", "int4")
DEVICES = ("cpu", "cuda")  # where torchao's weight-only kernels (and their dequantising fallbacks) run
INT4_GROUP_SIZES = (128, 64, 32, 16)  # the default int4 group size: the largest of these that fits every layer


class QuantizationUnsupported(RunInputError):
    """A quantization this model or device cannot do: an unknown method, a device torchao cannot quantize
    on, a group size that does not divide a layer's inputs, or torchao missing."""


@dataclass(frozen=True)
class Quantized:
    """What `quantize_model` did: `method` ("int8", "int4"), `group_size` (inputs sharing a scale; None:
    one scale a row), `layers` (the Linear modules quantized), `kept` (Linear modules left in float, with why),
    `fp_weight_bytes` and `weight_bytes` (all the model's parameters and buffers, before and after)."""

    method: str
    group_size: int | None
    layers: tuple[str, ...]
    kept: tuple[str, ...]
    fp_weight_bytes: int
    weight_bytes: int


def quantize_model(model: nn.Module, method: str, group_size: int | None = None) -> Quantized:
    """Quantizes the weights of `model`'s Linear modules in place, weight-only: "int8" (per row by
    default, or per `group_size` inputs) or "int4" (per `group_size` inputs; default the largest of
    128, 64, 32, 16 dividing every layer's inputs). Activations stay in the model's float dtype.
    Raises QuantizationUnsupported (nothing changed) for what cannot be done."""
    if method not in QUANTIZATIONS:
        raise QuantizationUnsupported(f"unknown quantization {method!r}: choose one of {', '.join(QUANTIZATIONS)}")
    device = _device_of(model)
    check_device(method, device)
    layers, kept = _quantizable(model)
    if method == "int4" and group_size is None:
        group_size = _default_group_size(layers)
    if group_size is not None:
        _check_group_size(method, group_size, layers)
    config = _config(method, group_size)
    before = weight_bytes(model)
    chosen = {id(module) for module in layers.values()}
    with _quiet_torchao():
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=lambda module, _name: id(module) in chosen)
    return Quantized(method, group_size, tuple(layers), kept, before, weight_bytes(model))


def check_device(method: str, device: torch.device | str) -> None:
    """Raises QuantizationUnsupported if `method` cannot run on `device` (or torchao is missing): a caller
    may ask before loading a model."""
    device_type = torch.device(device).type
    if device_type not in DEVICES:
        raise QuantizationUnsupported(f"{method} quantization runs on {' or '.join(DEVICES)}, not on {device_type}: "
                                      "load the model on one of those, or leave out --quantize")
    try:
        with _quiet_torchao():
            import torchao  # noqa: F401
    except ImportError as error:
        raise QuantizationUnsupported(f"{method} quantization needs torchao ({error}): pip install torchao") from error


def weight_bytes(model: nn.Module) -> int:
    """Bytes of `model`'s parameters and buffers as stored: a quantized tensor counts its integer data and
    its scales (each storage once, so a tied head counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        for part in _storage_parts(tensor):
            key = (part.untyped_storage().data_ptr(), part.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += part.untyped_storage().nbytes()
    return total


# ---------------------------------------------------------------- helpers


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _quantizable(model: nn.Module) -> tuple[dict[str, nn.Linear], tuple[str, ...]]:
    """The Linear modules to quantize by name, and those kept in float with why."""
    embedding_weights = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    layers, kept = {}, []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:  # a LoRA or 4-bit layer is not a plain Linear: left alone
            continue
        if id(module.weight) in embedding_weights:
            kept.append(f"{name} (tied to the embedding)")
        elif not module.weight.dtype.is_floating_point or type(module.weight) is not nn.Parameter:
            kept.append(f"{name} (already quantized)")
        else:
            layers[name] = module
    return layers, tuple(kept)


def _default_group_size(layers: dict[str, nn.Linear]) -> int:
    for size in INT4_GROUP_SIZES:
        if all(layer.in_features % size == 0 for layer in layers.values()):
            return size
    widths = sorted({layer.in_features for layer in layers.values()})
    raise QuantizationUnsupported(f"int4 quantization needs a group size of {', '.join(map(str, INT4_GROUP_SIZES))} "
                                  f"dividing every layer's inputs; this model's layers take {widths}")


def _check_group_size(method: str, group_size: int, layers: dict[str, nn.Linear]) -> None:
    if group_size < 1:
        raise QuantizationUnsupported(f"the group size must be a positive number of inputs, not {group_size}")
    misfits = [f"{name} ({layer.in_features})" for name, layer in layers.items() if layer.in_features % group_size]
    if misfits:
        fitting = [size for size in INT4_GROUP_SIZES if all(layer.in_features % size == 0 for layer in layers.values())]
        hint = f"; group sizes that fit: {', '.join(map(str, fitting))}" if fitting else ""
        raise QuantizationUnsupported(f"{method} group size {group_size} does not divide the inputs of "
                                      f"{len(misfits)} layers, e.g. {', '.join(misfits[:3])}{hint}")


def _config(method: str, group_size: int | None):
    with _quiet_torchao():
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

    if method == "int8":  # set_inductor_config would change torch.compile's settings for the whole process
        granularity = {} if group_size is None else {"granularity": PerGroup(group_size)}
        return Int8WeightOnlyConfig(set_inductor_config=False, **granularity)
    assert group_size is not None
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, "int4"), granularity=PerGroup(group_size))  # torch.int4: missing from torch's stubs


def _storage_parts(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors holding `tensor`'s data: itself, or a tensor subclass's inner tensors."""
    data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
    flatten = getattr(type(data), "__tensor_flatten__", None)
    if flatten is None or type(data) is torch.Tensor:
        yield data
        return
    names, _ = flatten(data)
    for name in names:
        yield from _storage_parts(getattr(data, name))


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """torchao's import logs a warning for each optional kernel library it cannot load (CUDA-only ones
    on a CPU machine) and torch one for its enums: noise to a user who asked for a CPU quantization."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
