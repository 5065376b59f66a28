"""Liger Kernel's Triton kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU's gate), CUDA only.

Each wrapper imports liger_kernel when first called (the package and Triton exist on GPU machines;
`pip install 'tabula[kernels]'`) and refuses, in one line, a tensor that is not on a CUDA device:
the plan refuses `liger` choices off CUDA before a run starts (schemas/kernels.py), this is the
last word for a model built by hand. The module classes swap in by `__class__` (kernels.apply_kernels):
parameters, names and checkpoints stay the same.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ..blocks.attention import CausalSelfAttention
from ..blocks.mlp import SwigluMLP
from ..blocks.norm import RMSNorm


class LigerUnavailable(RuntimeError):
    """Liger Kernel cannot run here: not a CUDA tensor, or liger_kernel (or Triton) not installed."""


def _functional(x: torch.Tensor, what: str) -> Any:
    if x.device.type != "cuda":
        raise LigerUnavailable(f"model.kernels: {what} is liger, whose Triton kernels run on CUDA GPUs only, and this "
                               f"tensor is on {x.device.type}: choose torch (standard or chunked for cross_entropy)")
    try:
        return importlib.import_module("liger_kernel.transformers.functional")
    except ImportError as error:
        raise LigerUnavailable(f"model.kernels: {what} is liger and liger_kernel cannot be imported ({error}): "
                               f"pip install 'tabula[kernels]'") from error


def liger_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, C) hidden states through a (vocab, C) head, over targets != -100
    (0 where every target is -100), without the full logits."""
    functional = _functional(x, "cross_entropy")
    flat = targets.reshape(-1)
    total: torch.Tensor = functional.liger_fused_linear_cross_entropy(x.reshape(-1, x.size(-1)), weight, flat, ignore_index=-100,
                                                                      reduction="sum")
    return total.float() / (flat != -100).sum().clamp(min=1)


class LigerRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # llama casting (fp32 inverse rms); not in place: the gradient it would overwrite may be read again
        normed: torch.Tensor = _functional(x, "rmsnorm").liger_rms_norm(x, self.weight, self.eps, 0.0, "llama", False)
        return normed


class LigerSwiglu(SwigluMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated: torch.Tensor = _functional(x, "swiglu").liger_swiglu(self.gate(x), self.up(x))  # (B, T, hidden)
        out: torch.Tensor = self.down(self.dropout(gated))
        return out


class LigerRopeAttention(CausalSelfAttention):
    def rotate(self, q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope  # (T, hs), halves layout as Llama's: liger's (1, T, hs)
        rotated: tuple[torch.Tensor, torch.Tensor] = _functional(q, "rope").liger_rope(
            q.transpose(1, 2), k.transpose(1, 2), cos[None].to(q.dtype), sin[None].to(q.dtype))  # (B, nh, T, hs), (B, n_kv, T, hs)
        return rotated[0].transpose(1, 2), rotated[1].transpose(1, 2)  # (B, T, nh, hs), (B, T, n_kv, hs)
