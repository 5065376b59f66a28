"""The transformer block, the default layer kind: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x))."""

from __future__ import annotations

import torch
from torch import nn

from tabula.schemas.model import TransformerBlock as TransformerSpec

from ..hf_mapping import NoHF
from .init import WeightInit
from .masks import Mask
from .registry import ATTENTION, BLOCK, MLP, NORM


@BLOCK.register("transformer")
class TransformerBlock(nn.Module):
    """x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); dropout on both residual branches.
    Parameters `attn_norm`, `attn`, `mlp_norm`, `mlp` (their kinds' own below them)."""

    hf = NoHF("transformer has no Hugging Face equivalent of its own: it maps through its attention, MLP and norm kinds")

    def __init__(self, spec: TransformerSpec, d_model: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = NORM[spec.norm.kind].build(spec.norm, d_model)
        self.attn = ATTENTION[spec.attention.kind].build(spec.attention, d_model=d_model, norm_eps=spec.norm.eps, dropout=dropout)
        self.mlp_norm = NORM[spec.norm.kind].build(spec.norm, d_model)
        self.mlp = MLP[spec.mlp.kind].build(spec.mlp, d_model)
        self.dropout = nn.Dropout(dropout)
        self.window = spec.attention.window  # the sliding window (the model builds its masks from the spec's patterns)
        self.checkpoint_activations = False  # set by compile.apply_activation_checkpointing

    @classmethod
    def build(cls, spec: TransformerSpec, *, d_model: int, dropout: float) -> TransformerBlock:
        return cls(spec, d_model, dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: Mask | None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, mask, prefix))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x  # (B, T, C)

    def init_weights(self, init: WeightInit) -> None:
        self.attn_norm.init_weights(init.at("attn_norm"))
        self.attn.init_weights(init.at("attn"))
        self.mlp_norm.init_weights(init.at("mlp_norm"))
        self.mlp.init_weights(init.at("mlp"))
