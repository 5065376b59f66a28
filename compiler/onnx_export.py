"""A tabula model as an ONNX graph, through torch's exporter (torch.export, then onnxscript).

The graph takes `input_ids` (batch, seq) int64 and returns `logits` (batch, seq, vocab) float32, both
axes dynamic (1 <= seq <= max_seq_len): the full-context forward, what onnxruntime runs for a prompt or
for a whole sequence at each step. With `with_cache` it also takes each layer's past keys and values
(`past_key_values.<i>.key`, `.value`: batch, heads, past_seq, width; past_seq may be 0) and returns them
with the new tokens' (`present.<i>.key`, `.value`), Hugging Face Optimum's names: prefill once, then feed
a token at a time with the presents (compiler/onnx_cache.py, whose wrapper is what is traced).

What is exported is checked before the exporter runs (`onnx_problems`): only the kinds whose graphs were
compared against onnxruntime (tests/compiler/test_onnx_export.py: logits within 1e-4 in fp32) are taken;
anything else is refused with the reason, as is any model the exporter itself cannot trace.

Written beside the graph: `tabula_onnx.json` (input and output names, vocab size, max_seq_len, opset,
the tabula version), so a user's runtime knows the graph's contract without reading it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tabula.schemas.model import Model as ModelSpec

if TYPE_CHECKING:
    from .model import Transformer

__all__ = ["ONNX_FILE", "ONNX_INFO_FILE", "OnnxExportError", "onnx_problems", "export_onnx"]

ONNX_FILE = "model.onnx"
ONNX_INFO_FILE = "tabula_onnx.json"
OPSET = 18

# Kinds whose exported graphs match tabula's logits under onnxruntime (the parity test covers each).
EXPORTABLE = {
    "attention": {"mha", "gqa", "mqa", "mla"},
    "mlp": {"gelu", "swiglu"},
    "norm": {"rmsnorm", "layernorm"},
    "position": {"rope", "learned", "none"},
    "block": {"transformer"},
}


class OnnxExportError(Exception):
    """A model that cannot be exported to ONNX: `problems`, one line each, naming what and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def onnx_problems(spec: ModelSpec) -> list[str]:
    """Why this model cannot be exported (empty where it can), before any weights are read: every
    layer's block (a layer pattern's overrides too) and the positions."""
    from tabula.schemas.model import TransformerBlock

    found: list[tuple[str, str, str]] = []
    for layer, block in enumerate(spec.layer_blocks):
        path = spec.block_path(layer)
        if not isinstance(block, TransformerBlock):
            found.append((f"{path}", "block", block.kind))
            continue
        found += [(f"{path}.attention", "attention", block.attention.kind), (f"{path}.mlp", "mlp", block.mlp.kind),
                  (f"{path}.norm", "norm", block.norm.kind)]
    found.append(("model.position", "position", spec.position.kind))
    return list(dict.fromkeys(
        f"{path}.kind: {kind}: no verified ONNX graph for this {family} kind (exportable: {', '.join(sorted(EXPORTABLE[family]))})"
        for path, family, kind in found if kind not in EXPORTABLE[family]))


class _Logits(nn.Module):
    """input_ids (B, T) -> logits (B, T, vocab): the model's forward with one named input and output."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids)  # (B, T, vocab)
        return logits


def _export_logits(model: Transformer, batch: Any, optimize: bool) -> Any:
    """input_ids -> logits. Traced at the full context: a sliding window's mask is only built for sequences longer
    than the window, and the branch taken at trace time is the one the graph keeps (its mask is right at any length)."""
    example = torch.zeros((2, model.max_seq_len), dtype=torch.long)
    seq = torch.export.Dim("seq", min=1, max=model.max_seq_len)
    return torch.onnx.export(_Logits(model).eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
                             input_names=["input_ids"], output_names=["logits"],
                             dynamic_shapes={"input_ids": {0: batch, 1: seq}}, optimize=optimize)


def _export_cached(model: Transformer, batch: Any, optimize: bool) -> Any:
    """input_ids and each layer's past keys and values -> logits and the presents (onnx_cache.CachedDecoder),
    traced with a past of 3 tokens and 5 new ones: past length and sequence both dynamic (the past may be empty)."""
    from .onnx_cache import CachedDecoder, cache_names, cache_shapes

    example = torch.zeros((2, 5), dtype=torch.long)
    past = tuple((torch.zeros(2, heads, 3, key), torch.zeros(2, heads, 3, value)) for heads, key, value in cache_shapes(model))
    seq = torch.export.Dim("seq", min=1, max=model.max_seq_len)
    past_seq = torch.export.Dim("past_seq", min=0, max=model.max_seq_len - 1)
    cache = {0: batch, 2: past_seq}
    inputs, outputs = cache_names(len(past))
    return torch.onnx.export(CachedDecoder(model).eval(), (example, past), dynamo=True, opset_version=OPSET, verbose=False,
                             input_names=["input_ids", *inputs], output_names=["logits", *outputs],
                             dynamic_shapes={"input_ids": {0: batch, 1: seq}, "past": tuple((cache, cache) for _ in past)},
                             optimize=optimize)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def export_onnx(model: Transformer, out_dir: str | os.PathLike[str], *, optimize: bool = False, with_cache: bool = False) -> list[str]:
    """Writes `model` (a plain Transformer: adapters merged, no virtual tokens) as out_dir/model.onnx and
    out_dir/tabula_onnx.json, in fp32 on the CPU; returns the names written. Raises OnnxExportError where
    the model carries virtual tokens or the exporter cannot trace it. `optimize` runs onnxscript's graph
    optimiser (several times the export's time; onnxruntime applies its own optimisations when it loads the graph).
    `with_cache`: the graph takes each layer's past keys and values and returns them with the new tokens'
    (compiler/onnx_cache.py; names in tabula_onnx.json)."""
    if model.virtual_tokens is not None:
        raise OnnxExportError(["prompt and prefix tuning's virtual tokens are not part of the ONNX graph: "
                               "export the adapter with --format peft"])
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError([f"ONNX export needs {' and '.join(missing)}: pip install 'tabula[onnx]'"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation inside the exporter: nothing the user can act on
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            # the same axis named on every cache input: torch says it names it once
            warnings.filterwarnings("ignore", category=UserWarning, message=".*The axis name")
            program = _export_cached(model, batch, optimize) if with_cache else _export_logits(model, batch, optimize)
    except Exception as error:  # the exporter's own failures have many types; the reason is its message
        raise OnnxExportError([f"torch's ONNX exporter could not trace the model: {_first_line(error)}"]) from error
    if program is None:  # only a legacy export returns None
        raise OnnxExportError(["torch's ONNX exporter returned no program"])
    program.save(str(out / ONNX_FILE))
    written = [ONNX_FILE]
    if (out / f"{ONNX_FILE}.data").is_file():  # weights over 2 GB go to an external file
        written.append(f"{ONNX_FILE}.data")
    (out / ONNX_INFO_FILE).write_text(json.dumps(onnx_info(model, with_cache=with_cache), indent=2) + "\n", encoding="utf-8")
    return [*written, ONNX_INFO_FILE]


def onnx_info(model: Transformer, *, with_cache: bool = False) -> dict[str, Any]:
    """The graph's contract, as tabula_onnx.json holds it: with the cache, each layer's past and present
    (keys after QK-norm and RoPE; every past the same length, the new tokens' positions start after it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tabula_version = version("tabula")
    except PackageNotFoundError:
        tabula_version = None
    inputs: dict[str, Any] = {"input_ids": {"dtype": "int64", "shape": ["batch", "seq"]}}
    outputs: dict[str, Any] = {"logits": {"dtype": "float32", "shape": ["batch", "seq", model.vocab_size]}}
    if with_cache:
        from .onnx_cache import cache_names, cache_shapes

        shapes = [(heads, width) for heads, key, value in cache_shapes(model) for width in (key, value)]
        names = cache_names(len(shapes) // 2)
        for name, (heads, width) in zip(names[0], shapes, strict=True):
            inputs[name] = {"dtype": "float32", "shape": ["batch", heads, "past_seq", width]}
        for name, (heads, width) in zip(names[1], shapes, strict=True):
            outputs[name] = {"dtype": "float32", "shape": ["batch", heads, "past_seq + seq", width]}
    return {
        "inputs": inputs,
        "outputs": outputs,
        "vocab_size": model.vocab_size,
        "max_seq_len": model.max_seq_len,
        "opset": OPSET,
        "kv_cache": with_cache,
        "tabula_version": tabula_version,
    }
