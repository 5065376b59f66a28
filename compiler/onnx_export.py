"""A tabula model as an ONNX graph, through torch's exporter (torch.export, then onnxscript).

The graph takes `input_ids` (batch, seq) int64 and returns `logits` (batch, seq, vocab) float32, both
axes dynamic (1 <= seq <= max_seq_len): the full-context forward, what onnxruntime runs for a prompt or
for a whole sequence at each step. Key/value cache inputs and outputs are not part of this graph yet.

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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def export_onnx(model: Transformer, out_dir: str | os.PathLike[str], *, optimize: bool = False) -> list[str]:
    """Writes `model` (a plain Transformer: adapters merged, no virtual tokens) as out_dir/model.onnx and
    out_dir/tabula_onnx.json, in fp32 on the CPU; returns the names written. Raises OnnxExportError where
    the model carries virtual tokens or the exporter cannot trace it. `optimize` runs onnxscript's graph
    optimiser (several times the export's time; onnxruntime applies its own optimisations when it loads the graph)."""
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
    # Traced at the full context: a sliding window's mask is only built for sequences longer than the
    # window, and the branch taken at trace time is the one the graph keeps (its mask is right at any length).
    example = torch.zeros((2, model.max_seq_len), dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=model.max_seq_len)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation inside the exporter: nothing the user can act on
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            program = torch.onnx.export(_Logits(model).eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=["input_ids"], output_names=["logits"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq}}, optimize=optimize)
    except Exception as error:  # the exporter's own failures have many types; the reason is its message
        raise OnnxExportError([f"torch's ONNX exporter could not trace the model: {_first_line(error)}"]) from error
    if program is None:  # only a legacy export returns None
        raise OnnxExportError(["torch's ONNX exporter returned no program"])
    program.save(str(out / ONNX_FILE))
    written = [ONNX_FILE]
    if (out / f"{ONNX_FILE}.data").is_file():  # weights over 2 GB go to an external file
        written.append(f"{ONNX_FILE}.data")
    (out / ONNX_INFO_FILE).write_text(json.dumps(onnx_info(model), indent=2) + "\n", encoding="utf-8")
    return [*written, ONNX_INFO_FILE]


def onnx_info(model: Transformer) -> dict[str, Any]:
    """The graph's contract, as tabula_onnx.json holds it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tabula_version = version("tabula")
    except PackageNotFoundError:
        tabula_version = None
    return {
        "inputs": {"input_ids": {"dtype": "int64", "shape": ["batch", "seq"]}},
        "outputs": {"logits": {"dtype": "float32", "shape": ["batch", "seq", model.vocab_size]}},
        "vocab_size": model.vocab_size,
        "max_seq_len": model.max_seq_len,
        "opset": OPSET,
        "kv_cache": False,
        "tabula_version": tabula_version,
    }
