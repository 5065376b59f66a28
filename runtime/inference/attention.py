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

from .buffer import Fields, TokenBuffer
from .cache import KVState
from .paged import PagedBuffer
from .layers import LAYERS, Options, StepContext, rotate


def store_and_view(buffer: TokenBuffer | PagedBuffer, new: Fields, ctx: StepContext) -> tuple[Fields, torch.Tensor]:
    """Adds this step's per-token tensors to `buffer` and returns what the step attends to, with each
    held token's position. A rolling buffer is viewed before the write (the write may overwrite the
    oldest tokens the new ones still see); a growing one after it."""
    if isinstance(buffer, TokenBuffer) and buffer.rolling:
        held = buffer.attend_view(new, ctx.lengths, longest=ctx.longest)
        buffer.write(new, ctx.lengths, ctx.n_valid, longest=ctx.longest, uniform=ctx.uniform)
        return held
    buffer.write(new, ctx.lengths, ctx.n_valid, longest=ctx.longest, uniform=ctx.uniform)
    return buffer.attend_view(new, ctx.lengths, longest=ctx.longest)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, *,
           scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v: q (B, nh, T, d), keys (B, n_kv, S, d), values (B, n_kv, S, dv), mask
    (B, 1, T, S) or None (every key visible) -> (B, nh, T, dv). Key/value heads are shared by groups of query heads."""
    if keys.size(1) != q.size(1):
        if keys.size(1) == 1:
            keys, values = keys.expand(-1, q.size(1), -1, -1), values.expand(-1, q.size(1), -1, -1)
        else:  # query head h reads key head h // g: fold each group's g heads into the query axis (no copy of the keys)
            B, nh, T, d = q.shape
            n_kv = keys.size(1)
            g = nh // n_kv
            grouped = q.reshape(B, n_kv, g * T, d)  # row j*T + t: head kv*g + j, token t
            mask = None if mask is None else mask.repeat(1, 1, g, 1)  # (B, 1, g*T, S)
            y = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)  # (B, n_kv, g*T, dv)
            return y.reshape(B, nh, T, values.size(-1))
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
        keys, key_positions = store_and_view(state.buffer, new, ctx)
        mask = ctx.mask(key_positions, state.buffer.rolling)
        y = attend(q.transpose(1, 2), keys["k"].transpose(1, 2), keys["v"].transpose(1, 2), mask)  # (B, nh, T, hs)
        return module.o_proj(y.transpose(1, 2).reshape(B, T, H * hs))
