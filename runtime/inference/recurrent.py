"""The cached forward of a Mamba layer: a recurrent state in place of a KV cache.

A Mamba block (compiler/blocks/mamba.py, `cache_kind = "mamba"`) keeps, per row, the last d_conv - 1
inputs of its convolution and its (d_inner, d_state) scan state: the same bytes at any length. The
kind runs the whole block (norm, mixer, and the MLP a Jamba layer has), so hybrids of attention and
Mamba layers decode one token a step. A recurrent state cannot forget tokens: a rollback of any
token raises RollbackError (speculative decoding needs attention-only models).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tabula.compiler.blocks.mamba import MambaState

from .buffer import RollbackError
from .layers import LAYERS, Options, StepContext


class RecurrentState:
    """A Mamba layer's state for a batch (its rows' MambaState) and each row's length, to refuse rollbacks."""

    def __init__(self, state: MambaState, lengths: torch.Tensor) -> None:
        self.state = state
        self.lengths = lengths  # (B,) tokens each row's state has seen

    def select(self, rows: torch.Tensor) -> RecurrentState:
        return RecurrentState(MambaState(self.state.conv.index_select(0, rows), self.state.ssm.index_select(0, rows)),
                              self.lengths.index_select(0, rows))

    def concat_with(self, others: list[Any]) -> RecurrentState:
        states = [self, *others]
        return RecurrentState(MambaState(torch.cat([s.state.conv for s in states]), torch.cat([s.state.ssm for s in states])),
                              torch.cat([s.lengths for s in states]))

    def rollback(self, lengths: torch.Tensor) -> None:
        if bool((lengths != self.lengths).any()):
            raise RollbackError("a Mamba layer's recurrent state cannot forget tokens (it holds no per-token history)")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state.conv, self.state.ssm))

    def bytes_per_token(self) -> int:
        return 0


@LAYERS.register("mamba")
class MambaLayer:
    """The whole Mamba block over T new tokens a row, continuing each row's recurrent state."""

    def prepare(self, module: nn.Module, options: Options) -> None:
        return None

    def new_state(self, module: Any, aux: Any, batch: int, ctx: StepContext | None, *, window: int | None,
                  options: Options) -> RecurrentState:
        weight = module.mixer.in_proj.weight
        return RecurrentState(module.mixer.empty_state(batch, weight.device, weight.dtype),
                              torch.zeros(batch, dtype=torch.long, device=weight.device))

    def forward(self, module: Any, aux: Any, x: torch.Tensor, state: RecurrentState, ctx: StepContext) -> torch.Tensor:
        T = x.size(1)
        n_valid = ctx.n_valid if bool((ctx.n_valid < T).any()) else None  # padding must not advance the state
        x = x + module.mixer(module.norm(x), state.state, n_valid)
        if module.mlp is not None:
            x = x + module.mlp(module.mlp_norm(x))
        state.lengths = state.lengths + ctx.n_valid
        return x  # (B, T, C)
