"""Feed-forward networks: GELU (GPT-2, TabulaPrima) and SwiGLU (Llama)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import GeluMLP as GeluSpec
from tabula.schemas.model import SwigluMLP as SwigluSpec

from .registry import MLP


class GeluMLP(nn.Module):
    """down(gelu(up(x))); parameters `up`, `down`. `down` writes into the residual stream."""

    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # (B, T, hidden) in between


class SwigluMLP(nn.Module):
    """down(silu(gate(x)) * up(x)); parameters `gate`, `up`, `down`."""

    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=bias)
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@MLP.register("gelu")
def build_gelu(spec: GeluSpec, d_model: int) -> GeluMLP:
    return GeluMLP(d_model, spec.hidden, spec.bias)


@MLP.register("swiglu")
def build_swiglu(spec: SwigluSpec, d_model: int) -> SwigluMLP:
    return SwigluMLP(d_model, spec.hidden, spec.bias)
