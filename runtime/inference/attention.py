"""Cached attention for mha, gqa and mqa (compiler/blocks/attention.py CausalSelfAttention), sliding
window or not: the cache keeps each token's n_kv_heads keys (after QK-norm and RoPE) and values.

A full-attention layer's buffer is linear (grows with the sequence); a windowed layer's rolls over
`window + slack` slots, so its memory is bounded by the window.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .buffer import TokenBuffer
from .cache import KVState
from .layers import LAYERS, Options, StepContext, key_mask, rotate


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *,
           scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v: q (B, nh, T, d), keys (B, n_kv, S, d), values (B, n_kv, S, dv), mask
    (B, 1, T, S) -> (B, nh, T, dv). Key/value heads are shared by groups of query heads."""
    if keys.size(1) != q.size(1):
        repeats = q.size(1) // keys.size(1)
        if keys.size(1) == 1:
            keys, values = keys.expand(-1, q.size(1), -1, -1), values.expand(-1, q.size(1), -1, -1)
        else:
            keys, values = keys.repeat_interleave(repeats, dim=1), values.repeat_interleave(repeats, dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


@LAYERS.register("mha")
@LAYERS.register("gqa")
@LAYERS.register("mqa")
class HeadsKind:
    """Keys and values per key/value head: fields `k`, `v` of (n_kv, hs) a token."""

    def prepare(self, module: nn.Module, options: Options) -> Any:
        return None

    def new_state(self, module: nn.Module, aux: Any, batch: int, ctx: StepContext | None, *, window: int | None,
                  options: Options) -> KVState:
        return KVState(TokenBuffer(batch, window=window, slack=options.slack))

    def write_prefix(self, state: KVState, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Prefix tuning's virtual keys and values (B, n_kv, n, hs) at positions 0..n-1 (stored as they are:
        the training forward concatenates them after RoPE)."""
        B, n = keys.size(0), keys.size(2)
        zero = torch.zeros(B, dtype=torch.long, device=keys.device)
        state.buffer.write({"k": keys.transpose(1, 2), "v": values.transpose(1, 2)}, zero, torch.full_like(zero, n))

    def forward(self, module: Any, aux: Any, x: torch.Tensor, state: KVState, ctx: StepContext) -> torch.Tensor:
        B, T, _ = x.shape
        H, n_kv, hs = module.n_heads, module.n_kv_heads, module.head_dim
        q = module.q_norm(module.q_proj(x).view(B, T, H, hs))  # (B, T, nh, hs)
        k = module.k_norm(module.k_proj(x).view(B, T, n_kv, hs))  # (B, T, n_kv, hs)
        v = module.v_proj(x).view(B, T, n_kv, hs)
        if ctx.rope is not None:
            q, k = rotate(q, *ctx.rope), rotate(k, *ctx.rope)
        new = {"k": k, "v": v}
        buffer = state.buffer
        if buffer.rolling:
            keys, key_positions = buffer.attend_view(new, ctx.lengths)
            buffer.write(new, ctx.lengths, ctx.n_valid)
        else:
            buffer.write(new, ctx.lengths, ctx.n_valid)
            keys, key_positions = buffer.attend_view(new, ctx.lengths)
        mask = key_mask(key_positions, ctx.positions, ctx.window)
        y = attend(q.transpose(1, 2), keys["k"].transpose(1, 2), keys["v"].transpose(1, 2), mask)  # (B, nh, T, hs)
        return module.o_proj(y.transpose(1, 2).reshape(B, T, H * hs))
