"""Position kinds: rope, learned, none, and their torch-free facts."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..base import SpecModel
from .costs import Shapes, Storage


class PositionSpec(SpecModel):
    """What every position kind answers. Positions are embeddings or rotations: no parameter of
    theirs is a matmul's, so they add nothing to the 6N FLOPs, and nothing they compute outlives
    the forward except through attention (whose estimate counts the rotated queries and keys)."""

    # Whether the kind rotates queries and keys (attention kinds check their rotary width).
    rotary: ClassVar[bool] = False

    def parameter_shapes(self, prefix: str, d_model: int, max_seq_len: int) -> Shapes:
        return []

    def flops_per_token(self, d_model: int) -> int:
        return 0

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        return 0


class RopeScaling(SpecModel):
    kind: Literal["linear", "ntk"] = Field(
        description="linear: positions divided by factor (position interpolation); ntk: theta scaled so high frequencies are kept."
    )
    factor: float = Field(gt=1.0, description="How many times longer than the trained context the model should read.")


class Rope(PositionSpec):
    kind: Literal["rope"] = Field(description="Rotary position embeddings applied to queries and keys.")
    theta: float = Field(default=10000.0, gt=0, description="RoPE base; larger values suit longer contexts (Llama 3 uses 500000).")
    scaling: RopeScaling | None = Field(default=None, description="Optional scaling to read contexts longer than trained.")

    rotary: ClassVar[bool] = True


class LearnedPositions(PositionSpec):
    kind: Literal["learned"] = Field(description="A learned position embedding added to the token embedding (GPT-2).")

    def parameter_shapes(self, prefix: str, d_model: int, max_seq_len: int) -> Shapes:
        return [(prefix + "weight", (max_seq_len, d_model))]


class NoPositions(PositionSpec):
    kind: Literal["none"] = Field(description="No position information (NoPE); causal masking alone orders tokens.")
