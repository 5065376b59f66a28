"""Which keys each query may see: causal attention, a sliding window, and sparse patterns added to
the window (global tokens, as Longformer and BigBird; block-sparse strides, as the Sparse
Transformer's strided heads at block granularity), and how attention computes them (`backend`).

One predicate (`MaskPattern.allows`) says it for both sides of compiler/blocks/masks.py: the dense
boolean mask (the reference) and FlexAttention's block mask, whose blocks that no pair reaches are
skipped. It takes query and key positions as Python integers or as broadcasting torch tensors, so
this module stays torch-free; `keys_seen` counts a query's keys for the FLOPs estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field

from ..base import SpecModel

Backend = Literal["sdpa", "flex"]

BACKEND_DESCRIPTION = (
    "How masked attention is computed. sdpa: torch's scaled_dot_product_attention over a dense boolean mask (the reference; "
    "a mask repeats shared key/value heads and rules out the flash kernels). flex: FlexAttention's block mask "
    "(torch.nn.attention.flex_attention; compiled to Triton kernels on CUDA): shared heads stay shared and blocks nobody "
    "sees are skipped. Plain causal attention (no window, no documents) uses sdpa's causal kernel with either. FlexAttention "
    "has no backward on the CPU (torch 2.13): CPU training computes the same pattern with the dense mask; evaluation "
    "and sampling run eager FlexAttention there, several times slower than the dense mask unless compiled: flex is for GPUs. "
    "No attention dropout with flex."
)


class SparseAttention(SpecModel):
    """Keys a query sees besides its sliding window (block.attention.window, required)."""

    global_tokens: int = Field(
        default=0, ge=0,
        description="The first n positions of every sequence are global: every later token sees them, whatever its window "
        "(Longformer's and BigBird's global attention, causal). 0: none.",
    )
    block: int = Field(default=64, gt=0, description="Width in tokens of the blocks `stride` selects.")
    stride: int | None = Field(
        default=None, gt=0,
        description="Block-sparse strides: a token also sees, whole, every stride-th block before its own "
        "(blocks of `block` tokens; its own block causally), as the Sparse Transformer's strided heads at block "
        "granularity. null: no strided blocks.",
    )


@dataclass(frozen=True)
class MaskPattern:
    """Causal attention, limited to a `window` (None: the whole context), plus global tokens and strided blocks."""

    window: int | None = None
    global_tokens: int = 0
    block: int = 64
    stride: int | None = None

    @classmethod
    def of(cls, attention: Any) -> MaskPattern:
        """The pattern of an attention spec (its `window` and `sparse`)."""
        sparse = attention.sparse
        if sparse is None:
            return cls(attention.window)
        return cls(attention.window, sparse.global_tokens, sparse.block, sparse.stride)

    def plain(self, length: int) -> bool:
        """Whether, over `length` positions, every query sees every key before it (plain causal)."""
        return self.window is None or self.window >= length

    def allows(self, q: Any, k: Any) -> Any:
        """Whether query position q may see key position k (ints, or broadcasting integer tensors)."""
        causal = k <= q
        if self.window is None:
            return causal
        near = (q - k) < self.window
        if self.global_tokens:
            near = near | (k < self.global_tokens)
        if self.stride is not None:
            near = near | ((q // self.block - k // self.block) % self.stride == 0)
        return causal & near

    def keys_seen(self, q: int) -> int:
        """How many keys query position q sees (positions 0..q)."""
        if self.window is None:
            return q + 1
        spans = [(max(0, q - self.window + 1), q + 1), (0, min(self.global_tokens, q + 1))]
        if self.stride is not None:
            own = q // self.block
            spans += [(b * self.block, min((b + 1) * self.block, q + 1)) for b in range(own, -1, -self.stride)]
        covered, end = 0, 0
        for lo, hi in sorted(spans):
            lo = max(lo, end)
            if hi > lo:
                covered, end = covered + hi - lo, hi
        return covered

    def density(self, length: int) -> float:
        """The share of the causal square's (query, key) pairs the pattern keeps over `length` positions."""
        return _density(self, length)


@lru_cache(maxsize=256)
def _density(pattern: MaskPattern, length: int) -> float:
    if pattern.plain(length):
        return 1.0
    return sum(pattern.keys_seen(q) for q in range(length)) / (length * (length + 1) // 2)
