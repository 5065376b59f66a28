"""Norms: RMSNorm (Llama) and LayerNorm with an optional bias (GPT-2, TabulaPrima)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import LayerNorm as LayerNormSpec
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.model import RMSNorm as RMSNormSpec

from ..hf_mapping import HFConfig, HFMapping, NoHF
from .init import WeightInit
from .registry import NORM


class RMSNormToHF(HFMapping):
    """Llama, Mistral, Qwen2 and DeepSeek-V3 norms: the same scale, eps in rms_norm_eps."""

    renames = {"weight": "weight"}
    reads = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "DeepseekV3ForCausalLM")

    def config(self, spec: RMSNormSpec, model: ModelSpec, architecture: str) -> dict[str, Any]:
        return {"rms_norm_eps": spec.eps}

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        return {"kind": "rmsnorm", "eps": config["rms_norm_eps"]}, []


@NORM.register("rmsnorm")
class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama). The fused kernel accumulates in fp32 whatever x's dtype; the
    weight is cast to x's so that bf16 activations take the fused path too."""

    hf = RMSNormToHF()

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    @classmethod
    def build(cls, spec: RMSNormSpec, dim: int) -> RMSNorm:
        return cls(dim, spec.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)

    def init_weights(self, init: WeightInit | None = None) -> None:
        """Unit scale, under every scheme."""
        nn.init.ones_(self.weight)


@NORM.register("layernorm")
class LayerNorm(nn.Module):
    """Layer norm with a learned scale and, optionally, a learned bias."""

    hf = NoHF("layernorm has no Hugging Face equivalent here (rmsnorm maps)")

    def __init__(self, dim: int, eps: float, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    @classmethod
    def build(cls, spec: LayerNormSpec, dim: int) -> LayerNorm:
        return cls(dim, spec.eps, spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def init_weights(self, init: WeightInit | None = None) -> None:
        """Unit scale and zero bias, under every scheme."""
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
