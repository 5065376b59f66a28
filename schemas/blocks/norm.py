"""Norm kinds: rmsnorm (Llama) and layernorm (GPT-2, TabulaPrima), and their torch-free facts.

One norm spec serves the norm before attention, the one before the MLP and the final one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import SpecModel
from .costs import FLOPS_PER_PARAMETER, Shapes, Storage, count


class NormSpec(SpecModel):
    """What every norm kind answers, for a norm over a last dimension of width `dim`."""

    def parameter_shapes(self, prefix: str, dim: int) -> Shapes:
        raise NotImplementedError

    def flops_per_token(self, dim: int) -> int:
        """6 per parameter: the 6N convention counts every parameter outside the embeddings."""
        return FLOPS_PER_PARAMETER * count(self.parameter_shapes("", dim))

    def activation_bytes_per_token(self, dim: int, storage: Storage) -> int:
        """Bytes per token the norm keeps besides its output (which the matmuls reading it keep)."""
        raise NotImplementedError


class RMSNorm(NormSpec):
    kind: Literal["rmsnorm"] = Field(description="Root-mean-square norm with a learned scale (Llama).")
    eps: float = Field(default=1e-5, gt=0, description="Added to the mean square for numerical stability.")

    def parameter_shapes(self, prefix: str, dim: int) -> Shapes:
        return [(prefix + "weight", (dim,))]

    def activation_bytes_per_token(self, dim: int, storage: Storage) -> int:
        return 4 * dim + storage.stream * dim + 4  # x in fp32, x * rsqrt in the stream's type; rsqrt per token


class LayerNorm(NormSpec):
    kind: Literal["layernorm"] = Field(description="Layer norm with a learned scale and optional bias (GPT-2, TabulaPrima).")
    eps: float = Field(default=1e-5, gt=0, description="Added to the variance for numerical stability.")
    bias: bool = Field(default=True, description="Learn a bias as well as a scale.")

    def parameter_shapes(self, prefix: str, dim: int) -> Shapes:
        shapes: Shapes = [(prefix + "weight", (dim,))]
        return shapes + ([(prefix + "bias", (dim,))] if self.bias else [])

    def activation_bytes_per_token(self, dim: int, storage: Storage) -> int:
        return storage.stream * dim + 8  # the input; mean and rstd per token
