"""What every kind's torch-free facts are made of: parameter shapes and activation storage.

A kind's spec class (schemas/blocks/) answers, without torch, what its module will be:

    parameter_shapes(prefix, width...) -> Shapes   (name, shape) in the order the module registers
                                                   them, names below `prefix` ("blocks.0.attn.")
    flops_per_token(...) -> int                    training FLOPs (forward + backward) of one token
    activation_bytes_per_token(..., storage) -> int  bytes its forward keeps for the backward

`compiler/estimate.py` and `compiler/activations.py` add these up over the model; tests hold them
equal to the built module (names, shapes, counts exactly) and near a measured forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Shapes = list[tuple[str, tuple[int, ...]]]

# Training FLOPs per parameter per token: 2 forward, 4 backward (Kaplan et al. 2020's 6N).
FLOPS_PER_PARAMETER = 6


def linear(name: str, n_in: int, n_out: int, bias: bool) -> Shapes:
    """The parameters of nn.Linear(n_in, n_out, bias) registered as `name`."""
    return [(f"{name}.weight", (n_out, n_in))] + ([(f"{name}.bias", (n_out,))] if bias else [])


def count(shapes: Shapes) -> int:
    """How many numbers the parameters `shapes` lists hold."""
    return sum(math.prod(shape) for _, shape in shapes)


@dataclass(frozen=True)
class Storage:
    """How the tensors a forward keeps for the backward are stored.

    fp32: everything in 4 bytes. autocast (bf16/fp16 on one local process): matmul outputs in 2
    bytes over an fp32 residual stream, each matmul keeping its own half-precision copy of its
    input. half (DeepSpeed's 16-bit weights): the stream and matmul outputs in 2 bytes."""

    mode: Literal["fp32", "autocast", "half"]

    @classmethod
    def of(cls, precision: str, autocast: bool = True) -> Storage:
        """The storage of `precision` (fp32 | bf16 | fp16), under autocast or 16 bits throughout."""
        if precision == "fp32":
            return cls("fp32")
        return cls("autocast" if autocast else "half")

    @property
    def matmul(self) -> int:
        """Bytes of an element a matmul (or the attention kernel) writes."""
        return 4 if self.mode == "fp32" else 2

    @property
    def stream(self) -> int:
        """Bytes of an element of the residual stream (and of a norm's result in its type)."""
        return 2 if self.mode == "half" else 4

    def matmul_input(self, width: int, readers: int) -> int:
        """Bytes per token a `width`-wide tensor read by `readers` matmuls keeps: one tensor, except
        under autocast, where each matmul keeps its own half-precision copy."""
        return {"fp32": 4 * width, "autocast": 2 * width * readers, "half": 2 * width}[self.mode]
