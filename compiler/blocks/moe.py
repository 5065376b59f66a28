"""The mixture-of-experts MLP (`moe`, schemas/blocks/moe.py): a router, n_experts SwiGLU experts
stored as stacked tensors, optional shared experts.

Tokens are grouped by expert: the (token, expert) assignments are sorted by expert, each expert's
contiguous slice of gathered tokens runs through its SwiGLU as two matmuls (a loop over experts,
never over tokens), and the weighted outputs are added back to their tokens with index_add.

What the training loop needs from a routing layer lives on the module, not in the forward's result:
`aux_loss` (the weighted balancing and z-losses of the last forward, a tensor in its graph; the
model adds every layer's to the training loss), and `load` (assignments per expert counted since the
last `routing_step`, compiler/routing.py), which also moves DeepSeek-V3's balancing bias.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import MoEMLP as MoESpec

from .init import WeightInit
from .mlp import SwigluMLP
from .moe_hf import MoEToHF
from .registry import MLP



@MLP.register("moe")
class MoEMLP(nn.Module):
    """sum over the top_k experts e of w_e SwiGLU_e(x), plus the shared experts' SwiGLU(x)."""

    hf = MoEToHF()

    expert_bias: torch.Tensor | None  # buffers, declared for the type checker
    load: torch.Tensor

    def __init__(self, spec: MoESpec, d_model: int) -> None:
        super().__init__()
        self.spec = spec
        e, h = spec.n_experts, spec.hidden
        self.router = nn.Parameter(torch.empty(e, d_model))
        self.gate_up = nn.Parameter(torch.empty(e, 2 * h, d_model))
        self.down = nn.Parameter(torch.empty(e, d_model, h))
        self.shared = SwigluMLP(d_model, spec.shared_hidden, bias=False) if spec.n_shared else None
        if spec.balance == "bias":  # DeepSeek-V3's e_score_correction_bias: moved by routing_step, saved with the weights
            self.register_buffer("expert_bias", torch.zeros(e))
        else:
            self.expert_bias = None
        self.register_buffer("load", torch.zeros(e), persistent=False)  # assignments since the last routing_step
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.aux_loss: torch.Tensor | None = None  # the last training forward's weighted balancing + z-loss
        self.balance_loss: torch.Tensor | None = None  # its unweighted balancing loss (1 when uniform), detached

    @classmethod
    def build(cls, spec: MoESpec, d_model: int) -> MoEMLP:
        return cls(spec, d_model)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C) tokens -> router logits (N, E) fp32, scores (N, E), top-k expert ids (N, k), their weights (N, k)."""
        spec = self.spec
        logits = F.linear(x.float(), self.router.float())  # (N, E)
        scores = logits.softmax(dim=-1) if spec.router == "softmax" else logits.sigmoid()
        choice = scores if self.expert_bias is None else scores + self.expert_bias.float()
        ids = choice.topk(spec.top_k, dim=-1).indices  # (N, k): the bias moves the choice, not the weights
        weights = scores.gather(1, ids)
        if spec.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, scores, ids, weights * spec.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        logits, scores, ids, weights = self.route(x)
        out = self.experts(x, ids, weights.to(x.dtype))
        if self.shared is not None:
            out = out + self.shared(x)
        if self.training:
            self._account(logits, scores, ids)
        return out.reshape(shape)  # (B, T, C)

    def experts(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The routed experts' weighted outputs (N, C): assignments sorted by expert, one slice an expert."""
        n, k = ids.shape
        flat = ids.reshape(-1)  # (N k,) expert of each assignment
        order = flat.argsort(stable=True)
        token = order // k  # the token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.spec.n_experts)  # (E,)
        keep = None
        if self.spec.capacity_factor is not None:
            capacity = math.ceil(self.spec.capacity_factor * n * k / self.spec.n_experts)
            starts = counts.cumsum(0) - counts
            rank = torch.arange(order.numel(), device=x.device) - starts[flat[order]]  # position within its expert
            keep = rank < capacity
            order, token, counts = order[keep], token[keep], counts.clamp(max=capacity)
        gathered = x[token]  # (A, C), grouped by expert
        outputs = []
        for e, chunk in enumerate(torch.split(gathered, counts.tolist())):  # a loop over experts, not tokens
            if chunk.numel() == 0:
                outputs.append(chunk)
                continue
            gate, up = F.linear(chunk, self.gate_up[e]).chunk(2, dim=-1)  # (n_e, hidden) each
            outputs.append(F.linear(self.dropout(F.silu(gate) * up), self.down[e]))  # (n_e, C)
        routed = torch.cat(outputs) * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, routed)

    def _account(self, logits: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """The auxiliary losses of this forward, and the load it adds."""
        spec = self.spec
        counts = torch.bincount(ids.reshape(-1), minlength=spec.n_experts).float()
        with torch.no_grad():
            if self.load.dtype != torch.float32:  # counts past 256 are not exact in bf16 (DeepSpeed casts buffers)
                self.load = self.load.float()
            self.load += counts
        fraction = counts / counts.sum()  # f_e: the share of assignments to expert e
        probability = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=0)  # P_e: its mean (normalised) score
        balance = spec.n_experts * (fraction * probability).sum()  # 1 when uniform (Switch Transformer eq. 4)
        aux = logits.new_zeros(())
        if spec.balance == "aux_loss" and spec.aux_loss_weight > 0:
            aux = aux + spec.aux_loss_weight * balance
        if spec.z_loss_weight > 0:
            aux = aux + spec.z_loss_weight * logits.logsumexp(dim=-1).square().mean()
        self.aux_loss, self.balance_loss = aux, balance.detach()

    def init_weights(self, init: WeightInit) -> None:
        init.weight_(self.router, "router", "mlp")
        for name, residual in (("gate_up", False), ("down", True)):
            param = getattr(self, name)
            std = init.scheme.weight_std("mlp", residual=residual, fan_in=param.shape[-1], head_dim=0, n_layers=init.n_layers)
            init.normal_(param, name, std)
        if self.shared is not None:
            self.shared.init_weights(init.at("shared"))
        if self.expert_bias is not None:
            nn.init.zeros_(self.expert_bias)
        nn.init.zeros_(self.load)

