"""The mixture-of-experts MLP kind `moe` (Switch, Mixtral, DeepSeek-V3) and its torch-free facts.

A router scores each token against n_experts SwiGLU experts (softmax or sigmoid), each token runs
through its top_k experts (their outputs weighted by the scores, optionally renormalised over the
k), and n_shared always-on experts (DeepSeek) add theirs. Load is balanced by an auxiliary loss
(Switch/Mixtral: n_experts x sum_e f_e P_e, 1 when uniform) or by DeepSeek-V3's per-expert bias
that shifts the choice, not the weights (no auxiliary loss); a router z-loss keeps the logits small.
Dropless by default; a capacity factor drops what overflows an expert.

Parameters (compiler/blocks/moe.py registers them in this order):

    router           (n_experts, d_model)           the router's linear map
    gate_up          (n_experts, 2 hidden, d_model)  each expert's gate and up projections, stacked
    down             (n_experts, d_model, hidden)    each expert's down projection
    shared.gate|up|down.weight                       n_shared experts as one SwiGLU of n_shared x hidden
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..base import field_error
from .costs import Shapes, Storage, count, linear
from .mlp import MLPSpec


class MoEMLP(MLPSpec):
    kind: Literal["moe"] = Field(description="A mixture of SwiGLU experts: a router sends each token to its top_k experts (Mixtral, DeepSeek-V3).")
    n_experts: int = Field(gt=1, description="Routed experts.")
    top_k: int = Field(gt=0, description="Experts each token runs through (Mixtral 2, DeepSeek-V3 8).")
    hidden: int = Field(gt=0, description="Hidden width of each expert's SwiGLU (a shared expert's too).")
    n_shared: int = Field(default=0, ge=0, description="Always-on shared experts every token runs through (DeepSeek: 1); 0 for none.")
    router: Literal["softmax", "sigmoid"] = Field(
        default="softmax", description="Router scores: softmax over the experts (Mixtral) or a sigmoid per expert (DeepSeek-V3).")
    normalize: bool = Field(default=True, description="Divide the top_k weights by their sum (Mixtral and DeepSeek-V3 do).")
    scale: float = Field(default=1.0, gt=0, description="Multiply the routed experts' weights (DeepSeek-V3's routed_scaling_factor).")
    balance: Literal["aux_loss", "bias", "none"] = Field(
        default="aux_loss",
        description="Load balancing: aux_loss adds aux_loss_weight x the Switch balancing loss to the training loss; bias "
                    "(DeepSeek-V3, no auxiliary loss) moves a per-expert bias added to the scores for the choice only, by "
                    "bias_rate after each step, toward uniform load; none leaves the router alone.")
    aux_loss_weight: float = Field(default=0.01, ge=0, description="Weight of the balancing loss (balance: aux_loss); Switch uses 0.01.")
    bias_rate: float = Field(default=0.001, gt=0, description="Step of the balancing bias each optimizer step (balance: bias); DeepSeek-V3 uses 0.001.")
    z_loss_weight: float = Field(default=0.0, ge=0, description="Weight of the router z-loss, mean(logsumexp(router logits)^2) (ST-MoE: 0.001); 0 for none.")
    capacity_factor: float | None = Field(
        default=None, gt=0,
        description="null: dropless, every token reaches its k experts. A number: each expert takes at most "
                    "capacity_factor x tokens x top_k / n_experts assignments a micro-batch and drops the rest (the residual carries them).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each expert's gated activation while training; 0 for none.")

    input_readers: ClassVar[int] = 2  # the router and the experts' gathered input (and the shared expert)

    @model_validator(mode="after")
    def _k_fits(self) -> MoEMLP:
        if self.top_k > self.n_experts:
            raise field_error("top_k", f"top_k ({self.top_k}) must be at most n_experts ({self.n_experts})")
        return self

    @property
    def shared_hidden(self) -> int:
        """Width of the shared experts taken together (one SwiGLU)."""
        return self.n_shared * self.hidden

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        e, h, d = self.n_experts, self.hidden, d_model
        shapes: Shapes = [(prefix + "router", (e, d)), (prefix + "gate_up", (e, 2 * h, d)), (prefix + "down", (e, d, h))]
        if self.n_shared:
            s = self.shared_hidden
            shapes += linear(prefix + "shared.gate", d, s, False) + linear(prefix + "shared.up", d, s, False) + linear(prefix + "shared.down", s, d, False)
        return shapes

    def active_parameters(self, d_model: int) -> int:
        """The router, top_k experts and the shared ones."""
        expert = 3 * self.hidden * d_model
        return self.parameters(d_model) - (self.n_experts - self.top_k) * expert

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        """The router's logits and scores (fp32), each of the k assignments' gathered input, gate/up,
        silu, product and weighted output, and the shared expert's SwiGLU terms."""
        e, k, h = self.n_experts, self.top_k, self.hidden
        router = 3 * e * 4 + k * 12  # logits, scores, choice; top-k ids and weights
        routed = k * (d_model + 5 * h + d_model) * storage.matmul + (k * h if self.dropout > 0 else 0)
        shared = 4 * self.shared_hidden * storage.matmul if self.n_shared else 0
        return router + routed + shared

    def summary(self) -> str:
        shared = f" +{self.n_shared} shared" if self.n_shared else ""
        return f"moe {self.n_experts}x{self.hidden} top-{self.top_k}{shared}"
