"""Feed-forward networks: GELU (GPT-2, TabulaPrima) and SwiGLU (Llama). `down` writes into the
residual stream; an optional dropout follows the activation (the original TabulaPrima MLP's)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import GeluMLP as GeluSpec
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.model import SwigluMLP as SwigluSpec

from ..hf_mapping import HFConfig, HFMapping, NoHF
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
    """Llama's, Mistral's, Qwen2's and DeepSeek-V3's dense MLP: gate_proj, up_proj, down_proj."""

    renames = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    reads = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "DeepseekV3ForCausalLM")

    def problems(self, spec: SwigluSpec, model: ModelSpec, architecture: str, path: str) -> list[str]:
        if spec.bias and architecture == "MistralForCausalLM":
            return [f"{path}.bias: Mistral (sliding window) has no MLP biases; set bias: false"]
        if spec.bias and architecture == "Qwen2ForCausalLM":
            return [f"{path}.bias: Qwen2 (q, k, v biases) has no MLP biases; set bias: false"]
        if spec.bias and architecture == "DeepseekV3ForCausalLM":
            return [f"{path}.bias: DeepSeek-V3's MLP has no biases"]
        return []

    def config(self, spec: SwigluSpec, model: ModelSpec, architecture: str) -> dict[str, Any]:
        config = {"intermediate_size": spec.hidden, "hidden_act": "silu"}
        if architecture == "LlamaForCausalLM":
            config["mlp_bias"] = spec.bias
        if architecture == "DeepseekV3ForCausalLM":  # every layer a dense MLP: no mixture of experts
            config |= {"first_k_dense_replace": model.n_layers, "moe_intermediate_size": spec.hidden, "n_routed_experts": 1,
                       "n_shared_experts": 1, "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1}
        return config

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        spec: dict[str, Any] = {"kind": "swiglu", "hidden": config["intermediate_size"]}
        problems = []
        if config.get("hidden_act") != "silu":
            problems.append(f"config.json: hidden_act: {config.get('hidden_act')}: tabula's swiglu gates with silu")
        if architecture == "LlamaForCausalLM" and config.get("mlp_bias"):
            spec["bias"] = True
        n_layers, dense = config["num_hidden_layers"], config.get("first_k_dense_replace")
        if architecture == "DeepseekV3ForCausalLM" and dense < n_layers:
            problems.append(f"config.json: first_k_dense_replace: {dense}: layers {dense}-{n_layers - 1} are mixture-of-experts layers "
                            f"(n_routed_experts: {config.get('n_routed_experts')}); tabula imports DeepSeek-V3 models whose every layer "
                            f"is dense (first_k_dense_replace >= num_hidden_layers)")
        return spec, problems


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
