"""How the `moe` MLP maps to Hugging Face transformers: Mixtral (softmax router, no shared experts)
and DeepSeek-V3 (sigmoid router with its balancing bias, shared experts, dense first layers).

transformers 5 stores the experts as stacked tensors, as tabula does:

    router       -> mlp.gate.weight                    (n_experts, d_model)
    gate_up      -> mlp.experts.gate_up_proj           (n_experts, 2 hidden, d_model), gate rows first
    down         -> mlp.experts.down_proj              (n_experts, d_model, hidden)
    expert_bias  -> mlp.gate.e_score_correction_bias   DeepSeek-V3 (zeros where balance is not bias)
    shared.*     -> mlp.shared_experts.gate_proj|up_proj|down_proj   DeepSeek-V3
"""

from __future__ import annotations

from typing import Any

import torch

from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.model import MoEMLP as MoESpec

from ..hf_mapping import ExportError, HFMapping

MIXTRAL, DEEPSEEK = "MixtralForCausalLM", "DeepseekV3ForCausalLM"
RENAMES = {"router": "gate.weight", "gate_up": "experts.gate_up_proj", "down": "experts.down_proj",
           "expert_bias": "gate.e_score_correction_bias"}
SHARED = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def first_moe_layer(model: ModelSpec) -> int:
    """The first layer whose MLP is a mixture of experts (DeepSeek-V3's first_k_dense_replace)."""
    return next(i for i, block in enumerate(model.layer_blocks) if getattr(getattr(block, "mlp", None), "kind", None) == "moe")


class MoEToHF(HFMapping):
    """Mixtral's sparse MoE block, or DeepSeek-V3's MoE (with MLA attention)."""

    def architecture(self, spec: MoESpec, model: ModelSpec) -> str:
        return DEEPSEEK if getattr(getattr(model.block, "attention", None), "kind", None) == "mla" else MIXTRAL

    def problems(self, spec: MoESpec, model: ModelSpec, architecture: str, path: str) -> list[str]:
        problems = []
        if spec.capacity_factor is not None:
            problems.append(f"{path}.capacity_factor: {architecture} routes every token (dropless); set capacity_factor: null")
        if architecture == MIXTRAL:
            wrong = [(spec.n_shared, 0, "n_shared", "has no shared experts"), (spec.router, "softmax", "router", "routes by softmax"),
                     (spec.normalize, True, "normalize", "renormalises the top-k weights"), (spec.scale, 1.0, "scale", "does not scale them"),
                     (spec.balance == "bias", False, "balance", "has no balancing bias")]
            problems += [f"{path}.{name}: Mixtral {why}" for value, expected, name, why in wrong if value != expected]
        elif architecture == DEEPSEEK:
            if spec.router != "sigmoid":
                problems.append(f"{path}.router: DeepSeek-V3 routes by sigmoid scores")
            if spec.n_shared == 0:
                problems.append(f"{path}.n_shared: DeepSeek-V3 has shared experts (n_shared >= 1)")
        else:
            problems.append(f"{path}.kind: a mixture of experts maps to Mixtral or DeepSeek-V3, not {architecture}")
        return problems

    def config(self, spec: MoESpec, model: ModelSpec, architecture: str) -> dict[str, Any]:
        if architecture == MIXTRAL:
            return {"num_local_experts": spec.n_experts, "num_experts_per_tok": spec.top_k, "intermediate_size": spec.hidden,
                    "hidden_act": "silu", "router_aux_loss_coef": spec.aux_loss_weight, "router_jitter_noise": 0.0,
                    "output_router_logits": False}
        return {"n_routed_experts": spec.n_experts, "num_experts_per_tok": spec.top_k, "moe_intermediate_size": spec.hidden,
                "n_shared_experts": spec.n_shared, "norm_topk_prob": spec.normalize, "routed_scaling_factor": spec.scale,
                "n_group": 1, "topk_group": 1, "first_k_dense_replace": first_moe_layer(model), "hidden_act": "silu"}

    def tensors(self, spec: MoESpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in state.items():
            head, _, rest = name.partition(".")
            if head == "shared":
                child, _, leaf = rest.partition(".")
                out[f"shared_experts.{SHARED[child]}.{leaf}"] = tensor
            elif head in RENAMES:
                out[RENAMES[head]] = tensor
            else:
                raise ExportError([f"parameter {name} has no Hugging Face name"])
        if spec.n_shared and "expert_bias" not in state:  # DeepSeek-V3's bias buffer, unused without balance: bias
            out["gate.e_score_correction_bias"] = torch.zeros(spec.n_experts)
        return out
