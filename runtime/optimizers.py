"""Optimizers by `kind`: AdamW, Lion, Adafactor, SGD, with weight decay only where it belongs.

Norm scales, biases and embeddings (every parameter with fewer than two dimensions, and every
`nn.Embedding` weight, tied output projections included) go in a group without weight decay, as
do the parameters a module names in its class attribute `no_weight_decay` (Mamba's A_log and D, as
Mamba trains them).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tabula.schemas.registry import Registry
from tabula.schemas.train import SGD, Adafactor, AdamW, Lion

# kind -> (optimizer spec, parameter groups, device) -> optimizer
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: `decay` (matrices) and `no_decay` (norms, biases, embeddings). Shared (tied)
    parameters appear once; empty groups are dropped."""
    undecayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    undecayed |= {id(getattr(m, name)) for m in model.modules() for name in getattr(type(m), "no_weight_decay", ())}
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # named_parameters yields a tied parameter once
        if not param.requires_grad:
            continue
        if param.ndim < 2 or id(param) in undecayed:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


@OPTIMIZERS.register("adamw")
def _adamw(spec: AdamW, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA; foreach (multi-tensor) elsewhere
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, **fast)


@OPTIMIZERS.register("lion")
def _lion(spec: Lion, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    return LionOptimizer(groups, lr=spec.lr, betas=spec.betas)


@OPTIMIZERS.register("adafactor")
def _adafactor(spec: Adafactor, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(groups, lr=spec.lr, beta2_decay=spec.beta2_decay, eps=(spec.eps, 1e-3), foreach=True)


@OPTIMIZERS.register("sgd")
def _sgd(spec: SGD, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0, foreach=True)


def build_optimizer(optimizer_spec, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The spec's optimizer over `model`'s parameters (already on `device`), with the two groups above."""
    return OPTIMIZERS[optimizer_spec.kind](optimizer_spec, param_groups(model, optimizer_spec.weight_decay), device)


class LionOptimizer(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
    update = sign(beta1 * m + (1 - beta1) * g); m <- beta2 * m + (1 - beta2) * g; decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            moments = []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                moments.append(state["exp_avg"])
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            update = torch._foreach_mul(moments, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-group["lr"])
            torch._foreach_mul_(moments, beta2)
            torch._foreach_add_(moments, grads, alpha=1.0 - beta2)
        return loss
