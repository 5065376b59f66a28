"""Mamba-1's selective state-space mixer (Gu & Dao 2023): its fields and torch-free facts.

Over a d_model-wide stream the mixer widens to d_inner = expand x d_model channels, split by
in_proj into the scanned path x and the gate z; x runs through a causal depthwise convolution
(d_conv taps) and SiLU, x_proj derives the input-dependent dt (through a dt_rank bottleneck,
dt_proj), B and C (d_state each), and the selective scan
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,   y_t = C_t h_t + D x_t
runs per channel over a d_state-wide state; y is gated by silu(z) and out_proj writes it back.
transformers' MambaMixer has the same parameters under the same names.

MambaMixer is the fields and facts; the block kind that uses it (`MambaBlock`, kind mamba, in
schemas/model.py beside the unions it draws on) adds its norm and optional MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from ..base import SpecModel, field_error
from .costs import FLOPS_PER_PARAMETER, Shapes, Storage, linear

# Elementwise FLOPs per state element and token of the selective scan, forward and backward,
# which no matmul counts: exp(dt A), dt B x, the recurrence a h + b and the read-out C h forward
# (2 each); twice that backward, and the forward once more, recomputed chunk by chunk.
SCAN_FLOPS_PER_STATE = 8 + 16 + 8


@dataclass(frozen=True)
class MambaDims:
    """The widths a Mamba mixer derives over a d_model-wide stream."""

    d_inner: int  # channels scanned: expand x d_model
    d_state: int  # state width of each channel (N)
    d_conv: int  # taps of the causal depthwise convolution
    dt_rank: int  # width of the dt bottleneck: dt_rank, or ceil(d_model / 16)


class MambaMixer(SpecModel):
    """Mamba-1's selective state-space mixer. Paths in `check`'s errors are below `model`."""

    d_state: int = Field(default=16, gt=0, description="State width of each channel (N): what the recurrent state holds per channel.")
    d_conv: int = Field(default=4, gt=0, description="Taps of the causal depthwise convolution before the scan.")
    expand: int = Field(default=2, gt=0, description="d_inner = expand x d_model: the channels the mixer scans.")
    dt_rank: Literal["auto"] | int = Field(
        default="auto", description="Width of the bottleneck the time step dt is projected through; auto: ceil(d_model / 16).")
    conv_bias: bool = Field(default=True, description="A bias on the convolution (Mamba has one).")
    bias: bool = Field(default=False, description="Biases on in_proj and out_proj (Mamba has none).")
    inner_norms: bool = Field(
        default=False, description="RMS-normalise dt, B and C after x_proj (Jamba's mixer does; Mamba's does not).")
    dt_min: float = Field(default=0.001, gt=0, description="Smallest initial time step: dt_proj's bias draws dt log-uniformly in [dt_min, dt_max].")
    dt_max: float = Field(default=0.1, gt=0, description="Largest initial time step.")
    chunk: int = Field(
        default=32, gt=0,
        description="Tokens a chunk of the parallel scan holds: the scan keeps chunk x d_inner x d_state numbers at a time "
                    "(recomputed in the backward), so memory grows with the chunk, not the sequence. Does not change the result.")

    @model_validator(mode="after")
    def _time_steps_ordered(self) -> MambaMixer:
        if isinstance(self.dt_rank, int) and self.dt_rank <= 0:
            raise field_error("dt_rank", f"dt_rank must be positive or auto, found {self.dt_rank}")
        if self.dt_min > self.dt_max:
            raise field_error("dt_min", f"dt_min ({self.dt_min}) must not exceed dt_max ({self.dt_max})")
        return self

    def dims(self, d_model: int) -> MambaDims:
        """The derived widths over a `d_model`-wide stream."""
        rank = math.ceil(d_model / 16) if self.dt_rank == "auto" else self.dt_rank
        return MambaDims(self.expand * d_model, self.d_state, self.d_conv, rank)

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        """(name, shape) of the mixer's parameters in its registration order, below `prefix`."""
        E, N, K, R = (lambda d: (d.d_inner, d.d_state, d.d_conv, d.dt_rank))(self.dims(d_model))
        shapes: Shapes = [(prefix + "A_log", (E, N)), (prefix + "D", (E,))]  # a module's own parameters come first
        shapes += linear(prefix + "in_proj", d_model, 2 * E, self.bias)
        shapes += [(prefix + "conv1d.weight", (E, 1, K))] + ([(prefix + "conv1d.bias", (E,))] if self.conv_bias else [])
        shapes += linear(prefix + "x_proj", E, R + 2 * N, False)
        shapes += linear(prefix + "dt_proj", R, E, True)
        if self.inner_norms:
            shapes += [(prefix + "dt_norm.weight", (R,)), (prefix + "b_norm.weight", (N,)), (prefix + "c_norm.weight", (N,))]
        return shapes + linear(prefix + "out_proj", E, d_model, self.bias)

    def scan_flops_per_token(self, d_model: int) -> int:
        """The selective scan's elementwise FLOPs per token (training), which no matmul counts."""
        dims = self.dims(d_model)
        return SCAN_FLOPS_PER_STATE * dims.d_inner * dims.d_state

    def flops_per_token(self, d_model: int) -> int:
        """Training FLOPs of one token: 6 per parameter (the projections, the convolution's taps,
        and the elementwise A, D, biases and norms by the 6N convention) and the scan's. Linear in
        the sequence: no term grows with it."""
        return FLOPS_PER_PARAMETER * sum(math.prod(s) for _, s in self.parameter_shapes("", d_model)) + self.scan_flops_per_token(d_model)

    def activation_bytes_per_token(self, d_model: int, storage: Storage) -> int:
        """Bytes per token the mixer keeps for the backward (its input is the norm's): in_proj's
        output (x and z), the convolution's padded input, its output and its SiLU, x_proj's output
        (dt, B, C), dt_proj's output and its softplus, the scan's output, it plus the D skip, silu(z)
        and the gated product out_proj reads; the scan itself keeps only its inputs and one
        d_state-wide state per channel a chunk."""
        dims = self.dims(d_model)
        E, N, R = dims.d_inner, dims.d_state, dims.dt_rank
        elements = 2 * E + 3 * E + (R + 2 * N) + 2 * E + 4 * E
        norms = 2 * (R + 2 * N) * 4 if self.inner_norms else 0
        return elements * storage.matmul + norms + 4 * E * N // self.chunk

    def state_bytes(self, d_model: int, bytes_per_element: int = 4) -> int:
        """Bytes of one sequence's recurrent state (convolution window and SSM state) in one layer:
        what generation keeps per layer instead of a KV cache, whatever the length."""
        dims = self.dims(d_model)
        return bytes_per_element * dims.d_inner * (dims.d_conv - 1 + dims.d_state)
