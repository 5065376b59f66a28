"""What a mixture-of-experts model does between optimizer steps, and what it reports.

`routing_step(model)` is called by the training loop after every optimizer step: it sums each MoE
layer's expert load of the step over the ranks (every rank then moves DeepSeek-V3's balancing bias
by the same amount: bias_e += bias_rate x sign(mean load - load_e)) and returns the step's
`RoutingStats` (the loop averages them over its logging interval into `routing` events). Models
without a mixture of experts return None and cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks.moe import MoEMLP


@dataclass(frozen=True)
class RoutingStats:
    """One step's routing, on the device: `load` (MoE layers, n_experts) the share of the step's
    token-to-expert assignments each expert took (rows sum to 1; layers with fewer experts padded
    with 0), `balance_loss` (MoE layers,) each layer's balancing loss of the last micro-batch (1 when
    uniform, n_experts / top_k when every token picks the same experts)."""

    load: torch.Tensor
    balance_loss: torch.Tensor
    experts: tuple[int, ...]  # each layer's n_experts

    @property
    def imbalance(self) -> torch.Tensor:
        """Per layer, the busiest expert's share over the uniform share (1 when uniform)."""
        return imbalance(self.load, self.experts)


def imbalance(load: torch.Tensor, experts: tuple[int, ...]) -> torch.Tensor:
    """Per layer of `load` (layers, experts: shares), the busiest expert's share x n_experts (1 when uniform)."""
    return load.max(dim=1).values * torch.tensor(experts, dtype=load.dtype, device=load.device)


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    """The model's mixture-of-experts MLPs, in layer order."""
    return [module for module in model.modules() if isinstance(module, MoEMLP)]


@torch.no_grad()
def routing_step(model: nn.Module, layers: list[MoEMLP] | None = None) -> RoutingStats | None:
    """Ends a step's routing (see the module docstring); None for a model without MoE layers."""
    layers = moe_layers(model) if layers is None else layers
    if not layers:
        return None
    width = max(layer.spec.n_experts for layer in layers)
    load = torch.zeros(len(layers), width, device=layers[0].load.device)
    for i, layer in enumerate(layers):
        load[i, : layer.spec.n_experts] = layer.load.float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(load)
    load = load / load.sum(dim=1, keepdim=True).clamp(min=1)
    for i, layer in enumerate(layers):
        n = layer.spec.n_experts
        if layer.expert_bias is not None:
            moved = layer.expert_bias.float() + layer.spec.bias_rate * torch.sign(1.0 / n - load[i, :n])
            layer.expert_bias.copy_(moved.to(layer.expert_bias.dtype))
        layer.load.zero_()
    balance = torch.stack([layer.balance_loss if layer.balance_loss is not None else load.new_zeros(()) for layer in layers])
    return RoutingStats(load, balance.float(), tuple(layer.spec.n_experts for layer in layers))
