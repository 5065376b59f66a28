"""What every block kind (one layer of the model) has and answers, torch-free.

A layer is a block kind: `transformer` (attention then MLP, the default) or another kind that
subclasses BlockSpec (a Mamba block, say). `model.block` is the default block and `model.layers`
overrides it on ranges of layers (schemas/model.py); the plan, the estimates and the model ask each
layer's block spec, never its kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import SpecModel
from .costs import Shapes, Storage, count
from .sparsity import Backend, MaskPattern

if TYPE_CHECKING:
    from .attention import AttentionDims
    from .norm import NormSpec


class BlockSpec(SpecModel):
    """One layer's kind. Paths in `check`'s errors are below `model` and start with ("block",); the
    model re-points them at the override (`layers.<j>.block`) that the block came from."""

    if TYPE_CHECKING:  # every kind has these fields (declared there, in the order its YAML shows)
        kind: str
        norm: NormSpec  # the norm kind of its sublayers; the default block's also ends the model

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        """(name, shape) of the layer's parameters, in its module's registration order, below `prefix`."""
        raise NotImplementedError

    def parameters(self, d_model: int) -> int:
        """How many parameters the layer holds."""
        return count(self.parameter_shapes("", d_model))

    def active_parameters(self, d_model: int) -> int:
        """Parameters one token runs through (all of them, except in a mixture of experts)."""
        return self.parameters(d_model)

    def flops_per_token(self, d_model: int, seq_len: int) -> int:
        """Training FLOPs (forward and backward) of one token through the layer."""
        raise NotImplementedError

    def activation_bytes_per_token(self, d_model: int, seq_len: int, storage: Storage, dropout: float) -> int:
        """Bytes per token the layer keeps for the backward, its norms and dropout masks included."""
        raise NotImplementedError

    def check(self, d_model: int, *, rotary: bool) -> None:
        """Raises a field error where the layer's widths do not fit the model."""

    @property
    def window(self) -> int | None:
        """The sliding attention window of the layer (None: the whole causal context, or no attention)."""
        return None

    @property
    def pattern(self) -> MaskPattern:
        """Which keys the layer's attention lets each query see (window and sparse patterns; plain causal
        for a layer without attention). The model builds one mask per distinct (pattern, backend)."""
        return MaskPattern(self.window)

    @property
    def attention_backend(self) -> Backend:
        """How the layer's masked attention is computed (block.attention.backend; sdpa without attention)."""
        return "sdpa"

    def attention_dims(self, d_model: int) -> AttentionDims | None:
        """The layer's attention widths, or None for a layer without attention."""
        return None

    def summary(self) -> str:
        """A few words for `tabula plan`'s layer table: the block's kinds."""
        return self.kind


def norm_bytes(norm: NormSpec, d: int, storage: Storage, readers: int) -> int:
    """Bytes per token a norm over width d keeps, its output included (kept by the `readers`
    matmuls that read it: one tensor, except under autocast, where each keeps its own copy)."""
    return norm.activation_bytes_per_token(d, storage) + storage.matmul_input(d, readers)
