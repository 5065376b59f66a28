"""Kernels chosen by `model.kernels` (schemas/kernels.py): the same functions as the reference
modules and loss, computed with less memory (chunked cross-entropy) or fused Triton kernels (Liger).

    loss_kernel(kernels) -> None (standard: logits, then compiler.model.cross_entropy) or a function
                            (x (B, T, C), head weight (vocab, C), targets (B, T)) -> mean loss
    apply_kernels(model, kernels) -> model   swaps Liger's RMSNorm, SwiGLU and RoPE in, in place
                                             (a function over the plain model, as compile is)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from tabula.schemas.kernels import Kernels

from ..blocks.attention import CausalSelfAttention
from ..blocks.mlp import SwigluMLP
from ..blocks.norm import RMSNorm
from .chunked_ce import chunked_linear_cross_entropy
from .liger import LigerRMSNorm, LigerRopeAttention, LigerSwiglu, LigerUnavailable, liger_linear_cross_entropy

LossKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["apply_kernels", "loss_kernel", "chunked_linear_cross_entropy", "liger_linear_cross_entropy", "LigerUnavailable"]


def loss_kernel(kernels: Kernels) -> LossKernel | None:
    """The fused projection + loss `kernels.cross_entropy` chooses, or None for the standard one."""
    if kernels.cross_entropy == "chunked":
        return partial(chunked_linear_cross_entropy, chunk_tokens=kernels.chunk_tokens)
    if kernels.cross_entropy == "liger":
        return liger_linear_cross_entropy
    return None


SWAPS: tuple[tuple[str, type[nn.Module], type[nn.Module]], ...] = (
    ("rmsnorm", RMSNorm, LigerRMSNorm),
    ("swiglu", SwigluMLP, LigerSwiglu),
    ("rope", CausalSelfAttention, LigerRopeAttention),
)


def apply_kernels(model: nn.Module, kernels: Kernels) -> nn.Module:
    """Turns the modules `kernels` gives to Liger into their Liger classes (same parameters and names),
    in place, and returns the model. Modules of other kinds (LayerNorm, GELU, MLA) keep theirs."""
    for field, reference, liger in SWAPS:
        if getattr(kernels, field) != "liger":
            continue
        for module in model.modules():
            if type(module) is reference:
                module.__class__ = liger
    return model
