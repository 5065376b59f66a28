"""Feed-forward kinds: gelu (GPT-2, TabulaPrima) and swiglu (Llama), and their torch-free facts."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ..base import SpecModel
from .costs import FLOPS_PER_PARAMETER, Shapes, Storage, count, linear


class MLPSpec(SpecModel):
    """What every MLP kind has and answers, for a d_model -> d_model network."""

    if TYPE_CHECKING:  # every kind has these fields (declared there, in the order its YAML shows)
        kind: str
        hidden: int
        dropout: float

    # How many matmuls read the MLP's input (its norm's output); under autocast each keeps a copy.
    input_readers: ClassVar[int] = 1

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        raise NotImplementedError

    def parameters(self, d_model: int) -> int:
        """How many parameters the MLP holds."""
        return count(self.parameter_shapes("", d_model))

    def active_parameters(self, d_model: int) -> int:
        """Parameters one token runs through (a mixture of experts: its router, top-k and shared experts)."""
        return self.parameters(d_model)

    def flops_per_token(self, d_model: int) -> int:
        """6 per active parameter (forward and backward of its matmuls)."""
        return FLOPS_PER_PARAMETER * self.active_parameters(d_model)

    def summary(self) -> str:
        """A few words for the plan's layer table."""
        return f"{self.kind} {self.hidden}"

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        raise NotImplementedError

    def _dropout_bytes(self) -> int:
        # a one-byte mask; the dropped values replace the activation's output that the
        # down-projection would otherwise keep
        return self.hidden if self.dropout > 0 else 0


class GeluMLP(MLPSpec):
    kind: Literal["gelu"] = Field(description="Two projections with a GELU between them (GPT-2, TabulaPrima).")
    hidden: int = Field(gt=0, description="Width of the hidden layer (typically 4 x d_model).")
    bias: bool = Field(default=True, description="Add biases to both projections.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after the activation while training (the original TabulaPrima MLP has it); 0 for none.")

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        return linear(prefix + "up", d_model, self.hidden, self.bias) + linear(prefix + "down", self.hidden, d_model, self.bias)

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        return 2 * self.hidden * storage.matmul + self._dropout_bytes()  # up's output, gelu's


class SwigluMLP(MLPSpec):
    kind: Literal["swiglu"] = Field(description="Gated MLP with a SiLU gate (Llama); three projections.")
    hidden: int = Field(gt=0, description="Width of the gated hidden layer (typically 8/3 x d_model, rounded).")
    bias: bool = Field(default=False, description="Add biases to the three projections.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after the gated activation while training; 0 for none.")

    input_readers: ClassVar[int] = 2  # gate and up

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        shapes = linear(prefix + "gate", d_model, self.hidden, self.bias) + linear(prefix + "up", d_model, self.hidden, self.bias)
        return shapes + linear(prefix + "down", self.hidden, d_model, self.bias)

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        return 4 * self.hidden * storage.matmul + self._dropout_bytes()  # gate, silu(gate), up, their product
