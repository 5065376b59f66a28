"""Norms: RMSNorm (Llama) and LayerNorm with an optional bias (GPT-2, TabulaPrima)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import LayerNorm as LayerNormSpec
from tabula.schemas.model import RMSNorm as RMSNormSpec

from .registry import NORM


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama). The fused kernel accumulates in fp32 whatever x's dtype; the
    weight is cast to x's so that bf16 activations take the fused path too."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class LayerNorm(nn.Module):
    """Layer norm with a learned scale and, optionally, a learned bias."""

    def __init__(self, dim: int, eps: float, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


@NORM.register("rmsnorm")
def build_rmsnorm(spec: RMSNormSpec, dim: int) -> RMSNorm:
    return RMSNorm(dim, spec.eps)


@NORM.register("layernorm")
def build_layernorm(spec: LayerNormSpec, dim: int) -> LayerNorm:
    return LayerNorm(dim, spec.eps, spec.bias)
