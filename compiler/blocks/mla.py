"""Multi-head latent attention (DeepSeek-V2; TabulaPrima): low-rank query and key/value latents
and a decoupled rotary part.

Per head, a query/key has a content part of head_dim - rope_head_dim ("nope", no positions)
expanded from the latents, and a rotary part of rope_head_dim: the query's comes from the query
latent, the key's is one head projected straight from the hidden state and shared by every
head. Values are expanded from the key/value latent. A KV cache would store only the kv latent
and the rotary key, which is the point of MLA; training computes full keys and values.

Parameters: `q_down`, `q_up` (or `q_proj` without a query latent), `kv_down`, `k_rope`,
`kv_up`, `o_proj`; `q_latent_norm`, `kv_latent_norm` with latent_norm (DeepSeek-V3), and
`q_norm`, `k_norm` with QK-norm. `q_up` rows are per head [nope | rope]; `kv_up` rows are per
head [key nope | value], DeepSeek-V3's own layout, so the Hugging Face export copies them.
"""

from __future__ import annotations

import torch
from torch import nn

from tabula.schemas.model import MLA

from .attention import attend
from .norm import RMSNorm
from .position import apply_rope
from .registry import ATTENTION

LATENT_NORM_EPS = 1e-6  # DeepSeek-V3's latent norms use a fixed eps


class LatentAttention(nn.Module):
    """forward(x (B, T, C), rope (cos, sin) of width rope_head_dim, mask) -> (B, T, C)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        q_latent: int | None,
        kv_latent: int,
        rope_head_dim: int,
        v_head_dim: int,
        latent_norm: bool,
        bias: bool,
        qk_norm: bool,
        norm_eps: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.n_heads, self.q_latent = n_heads, q_latent
        self.nope_dim, self.rope_dim, self.v_head_dim = head_dim - rope_head_dim, rope_head_dim, v_head_dim
        qk_dim = head_dim  # nope + rope
        if q_latent is None:
            self.q_proj = nn.Linear(d_model, n_heads * qk_dim, bias=bias)
        else:
            self.q_down = nn.Linear(d_model, q_latent, bias=bias)
            self.q_latent_norm = RMSNorm(q_latent, LATENT_NORM_EPS) if latent_norm else nn.Identity()
            self.q_up = nn.Linear(q_latent, n_heads * qk_dim, bias=False)
        self.kv_down = nn.Linear(d_model, kv_latent, bias=bias)
        self.kv_latent_norm = RMSNorm(kv_latent, LATENT_NORM_EPS) if latent_norm else nn.Identity()
        self.kv_up = nn.Linear(kv_latent, n_heads * (self.nope_dim + v_head_dim), bias=False)
        self.k_rope = nn.Linear(d_model, rope_head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=bias)
        self.q_norm = RMSNorm(qk_dim, norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(qk_dim, norm_eps) if qk_norm else nn.Identity()
        self.dropout = dropout

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_latent is None:
            return self.q_proj(x)
        return self.q_up(self.q_latent_norm(self.q_down(x)))  # through the (B, T, q_latent) latent

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, nope, rope_dim = self.n_heads, self.nope_dim, self.rope_dim
        q = self.q_norm(self.queries(x).view(B, T, H, nope + rope_dim))  # (B, T, nh, qk)
        kv = self.kv_up(self.kv_latent_norm(self.kv_down(x))).view(B, T, H, nope + self.v_head_dim)
        k_nope, v = kv.split([nope, self.v_head_dim], dim=-1)  # (B, T, nh, nope), (B, T, nh, hv)
        k_shared = self.k_rope(x).view(B, T, 1, rope_dim).expand(B, T, H, rope_dim)  # one rotary key for all heads
        k = self.k_norm(torch.cat([k_nope, k_shared], dim=-1))  # (B, T, nh, qk)
        q_nope, q_rot = q.split([nope, rope_dim], dim=-1)
        k_nope, k_rot = k.split([nope, rope_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rot, *rope)], dim=-1)
        k = torch.cat([k_nope, apply_rope(k_rot, *rope)], dim=-1)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, H * self.v_head_dim)  # (B, T, nh * hv)
        return self.o_proj(y)


@ATTENTION.register("mla")
def build_mla(spec: MLA, *, d_model: int, norm_eps: float, dropout: float) -> LatentAttention:
    head_dim = spec.head_dim if spec.head_dim is not None else d_model // spec.n_heads
    return LatentAttention(
        d_model,
        spec.n_heads,
        head_dim,
        q_latent=spec.q_latent,
        kv_latent=spec.kv_latent,
        rope_head_dim=spec.rope_head_dim,
        v_head_dim=spec.v_head_dim if spec.v_head_dim is not None else head_dim,
        latent_norm=spec.latent_norm,
        bias=spec.bias,
        qk_norm=spec.qk_norm,
        norm_eps=norm_eps,
        dropout=dropout,
    )
