"""Linear + cross-entropy a chunk of tokens at a time: the (tokens x vocab) logits never exist whole.

The forward projects `chunk` tokens, takes their cross-entropy and drops the logits; the backward
projects each chunk again and turns softmax - one_hot into the gradients of the hidden states and of
the weight. Memory: one chunk's logits (and their softmax) instead of all tokens', at the price of
a second projection (2 x tokens x vocab x d_model FLOPs more). Plain PyTorch, every device; under
autocast the backward recomputes in the forward's precision, so both see the same logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over tokens of cross_entropy(x @ weight.T, targets) (targets == -100 left out), chunked."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        # x (N, C), weight (V, C), targets (N,)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for lo in range(0, x.size(0), chunk):
            logits = F.linear(x[lo : lo + chunk], weight).float()  # (n, V), dropped after the sum
            total = total + F.cross_entropy(logits, targets[lo : lo + chunk], ignore_index=IGNORE, reduction="sum")
        ctx.save_for_backward(x, weight, targets)
        ctx.chunk = chunk
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, targets = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for lo in range(0, x.size(0), ctx.chunk):
            rows, target = x[lo : lo + ctx.chunk], targets[lo : lo + ctx.chunk]
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                logits = F.linear(rows, weight)  # (n, V), as the forward computed them
            compute = logits.dtype
            probs = torch.softmax(logits.float(), dim=-1)  # d loss / d logits = softmax - one_hot
            del logits  # one chunk's (n, V) at a time: the probabilities are modified in place
            kept = target != IGNORE
            probs[kept, target[kept]] -= 1.0
            probs[~kept] = 0.0
            probs = probs.mul_(grad).to(compute)
            grad_x[lo : lo + ctx.chunk] = (probs @ weight.to(compute)).to(x.dtype)  # (n, C)
            grad_w += (probs.t() @ rows.to(compute)).float()  # (V, C)
        return grad_x, grad_w.to(weight.dtype), None, None


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of (B, T, C) hidden states projected by a (vocab, C) weight against (B, T)
    targets, over targets != -100; 0 with zero gradients where every target is -100 (as
    compiler.model.cross_entropy of the full logits)."""
    flat_targets = targets.reshape(-1)
    total: torch.Tensor = ChunkedLinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), weight, flat_targets, chunk_tokens)  # type: ignore[no-untyped-call]
    return total / (flat_targets != IGNORE).sum().clamp(min=1)
