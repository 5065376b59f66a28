"""Feed-forward networks: GELU (GPT-2, TabulaPrima) and SwiGLU (Llama). `down` writes into the
residual stream; an optional dropout follows the activation (the original TabulaPrima MLP's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import GeluMLP as GeluSpec
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.model import SwigluMLP as SwigluSpec

from ..hf_mapping import HFMapping, NoHF
from .init import WeightInit
from .registry import MLP


@MLP.register("gelu")
class GeluMLP(nn.Module):
    """down(dropout(gelu(up(x)))); parameters `up`, `down`."""

    hf = NoHF("gelu has no Hugging Face equivalent here (swiglu maps)")

    def __init__(self, d_model: int, hidden: int, bias: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build(cls, spec: GeluSpec, d_model: int) -> GeluMLP:
        return cls(d_model, spec.hidden, spec.bias, spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))  # (B, T, hidden) in between

    def init_weights(self, init: WeightInit) -> None:
        init.linear_(self.up, "up", "mlp")
        init.linear_(self.down, "down", "mlp", residual=True)


class SwigluToHF(HFMapping):
    """Llama's, Mistral's and DeepSeek-V3's dense MLP: gate_proj, up_proj, down_proj."""

    renames = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

    def problems(self, spec: SwigluSpec, model: ModelSpec, architecture: str, path: str) -> list[str]:
        if spec.bias and architecture == "MistralForCausalLM":
            return [f"{path}.bias: Mistral (sliding window) has no MLP biases; set bias: false"]
        if spec.bias and architecture == "DeepseekV3ForCausalLM":
            return [f"{path}.bias: DeepSeek-V3's MLP has no biases"]
        return []

    def config(self, spec: SwigluSpec, model: ModelSpec, architecture: str) -> dict:
        config = {"intermediate_size": spec.hidden, "hidden_act": "silu"}
        if architecture == "LlamaForCausalLM":
            config["mlp_bias"] = spec.bias
        if architecture == "DeepseekV3ForCausalLM":  # every layer a dense MLP: no mixture of experts
            config |= {"first_k_dense_replace": model.n_layers, "moe_intermediate_size": spec.hidden, "n_routed_experts": 1,
                       "n_shared_experts": 1, "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1}
        return config


@MLP.register("swiglu")
class SwigluMLP(nn.Module):
    """down(dropout(silu(gate(x)) * up(x))); parameters `gate`, `up`, `down`."""

    hf = SwigluToHF()

    def __init__(self, d_model: int, hidden: int, bias: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=bias)
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build(cls, spec: SwigluSpec, d_model: int) -> SwigluMLP:
        return cls(d_model, spec.hidden, spec.bias, spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.silu(self.gate(x)) * self.up(x)))  # (B, T, hidden) in between

    def init_weights(self, init: WeightInit) -> None:
        init.linear_(self.gate, "gate", "mlp")
        init.linear_(self.up, "up", "mlp")
        init.linear_(self.down, "down", "mlp", residual=True)
