"""The building blocks of a transformer, one concept a module, chosen by the spec's `kind`:

    attention.py  mha, gqa, mqa (CausalSelfAttention)     mla.py   mla (LatentAttention)
    position.py   rope, learned, none (Rope, ...)         norm.py  rmsnorm, layernorm
    mlp.py        gelu, swiglu                            registry.py  kind -> builder

Each builder takes its narrow sub-spec and the widths it needs, never the root spec.
"""

from __future__ import annotations

from torch import nn

from . import attention, mla, mlp, norm, position  # noqa: F401  (each registers its kinds)
from .registry import ATTENTION, MLP, NORM, POSITION


def build_attention(spec, *, d_model: int, norm_eps: float, dropout: float) -> nn.Module:
    """The attention module `spec` (mha | gqa | mqa | mla) describes over a d_model-wide stream;
    `norm_eps` is used by QK-norm, `dropout` on the attention weights while training."""
    return ATTENTION[spec.kind](spec, d_model=d_model, norm_eps=norm_eps, dropout=dropout)


def build_mlp(spec, d_model: int) -> nn.Module:
    """The feed-forward module `spec` (gelu | swiglu) describes, d_model -> d_model."""
    return MLP[spec.kind](spec, d_model)


def build_norm(spec, dim: int) -> nn.Module:
    """The norm `spec` (rmsnorm | layernorm) describes over a last dimension of width `dim`."""
    return NORM[spec.kind](spec, dim)


def build_position(spec, *, d_model: int, rotary_dim: int, max_seq_len: int) -> nn.Module:
    """The position module `spec` (rope | learned | none) describes: forward(x) -> (x, rope tables
    or None). `rotary_dim` is the width RoPE rotates (the head width, or MLA's rope_head_dim)."""
    return POSITION[spec.kind](spec, d_model=d_model, rotary_dim=rotary_dim, max_seq_len=max_seq_len)
