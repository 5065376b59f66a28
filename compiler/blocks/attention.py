"""Causal self-attention with one, some or all key/value heads per query head (MQA, GQA, MHA).

Computed with torch's scaled_dot_product_attention, so the device's flash or memory-efficient
kernel runs where it exists. A plain causal pass uses `is_causal`; a sliding window or
document masking passes a boolean mask built once per forward by the model (`attention_mask`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.model import GQA, MHA, MQA

from .norm import RMSNorm
from .position import apply_rope
from .registry import ATTENTION


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v over (B, nh, T, hs) queries and (B, n_kv, T, hs) keys/values.

    `mask` is None for plain causal attention, else a boolean (T, T) or (B, 1, T, T) mask where
    True means "may attend". Fewer key/value heads than query heads are shared in groups."""
    if mask is None:
        gqa = k.size(1) != q.size(1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
    if k.size(1) != q.size(1):
        # Kernels that take a mask do not all share heads themselves: repeat them.
        repeats = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def attention_mask(seq_len: int, window: int | None, document_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The boolean mask (True: may attend) for causal attention with an optional sliding window
    (each token sees itself and the window-1 tokens before it) and optional document ids (B, T)
    (tokens see only their own document). None where plain causal attention suffices.
    Returns (T, T) or, with document ids, (B, 1, T, T)."""
    windowed = window is not None and window < seq_len
    if not windowed and document_ids is None:
        return None
    query = torch.arange(seq_len, device=device)[:, None]
    key = torch.arange(seq_len, device=device)[None, :]
    mask = key <= query  # (T, T)
    if windowed:
        mask = mask & (query - key < window)
    if document_ids is not None:
        same_document = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
        mask = (mask & same_document)[:, None]  # (B, 1, T, T)
    return mask


class CausalSelfAttention(nn.Module):
    """Parameters `q_proj`, `k_proj`, `v_proj`, `o_proj` (and `q_norm`, `k_norm` with QK-norm).

    forward(x (B, T, C), rope (cos, sin) or None, mask) -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *, bias: bool, qk_norm: bool, norm_eps: float, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        # QK-norm normalises each head's query and key before RoPE (OLMo 2, Qwen 3).
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else nn.Identity()
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim))  # (B, T, nh, hs)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim))  # (B, T, n_kv, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh * hs)
        return self.o_proj(y)


def _build(spec: MHA | GQA | MQA, n_kv_heads: int, d_model: int, norm_eps: float, dropout: float) -> CausalSelfAttention:
    head_dim = spec.head_dim if spec.head_dim is not None else d_model // spec.n_heads
    return CausalSelfAttention(
        d_model, spec.n_heads, n_kv_heads, head_dim, bias=spec.bias, qk_norm=spec.qk_norm, norm_eps=norm_eps, dropout=dropout
    )


@ATTENTION.register("mha")
def build_mha(spec: MHA, *, d_model: int, norm_eps: float, dropout: float) -> CausalSelfAttention:
    return _build(spec, spec.n_heads, d_model, norm_eps, dropout)


@ATTENTION.register("gqa")
def build_gqa(spec: GQA, *, d_model: int, norm_eps: float, dropout: float) -> CausalSelfAttention:
    return _build(spec, spec.n_kv_heads, d_model, norm_eps, dropout)


@ATTENTION.register("mqa")
def build_mqa(spec: MQA, *, d_model: int, norm_eps: float, dropout: float) -> CausalSelfAttention:
    return _build(spec, 1, d_model, norm_eps, dropout)
