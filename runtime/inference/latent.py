"""Cached multi-head latent attention (compiler/blocks/mla.py LatentAttention): the cache keeps only
each token's kv latent (kv_latent numbers, after its norm) and the shared rotary key (rope_head_dim
numbers), so a token costs (kv_latent + rope_head_dim) numbers a layer, whatever the heads.

Two ways to decode from it:

absorbed (DeepSeek-V2)  the key up-projection is absorbed into the query (q_nope W_uk: a query in the
                        latent space) and the value up-projection into the output (the attention's
                        weighted sum of latents, then W_uv and o_proj): attention runs over the latents
                        directly, one shared "key head" of kv_latent + rope_head_dim. The rotary key is
                        stored rotated. Not with QK-norm, whose norm spans the content and rotary parts.
expanded                keys and values are expanded from the cached latents at every step (kv_up), the
                        rotary key rotated at its positions: the training forward's arithmetic exactly.
                        For testing the absorbed path, and for QK-norm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .attention import attend, store_and_view
from .buffer import TokenBuffer
from .cache import KVState
from .layers import LAYERS, Options, StepContext, rotate


def dense_weight(linear: Any) -> torch.Tensor:
    """A Linear's weight as a plain tensor (a quantized weight dequantized)."""
    weight: torch.Tensor = linear.weight
    dequantize = getattr(weight, "dequantize", None)
    return dequantize() if callable(dequantize) and type(weight) is not torch.nn.Parameter and type(weight) is not torch.Tensor else weight


def absorbs(module: Any, options: Options) -> bool:
    """Whether this layer decodes absorbed: options.absorb, or (None) wherever there is no QK-norm."""
    qk_norm = not isinstance(module.q_norm, nn.Identity) or not isinstance(module.k_norm, nn.Identity)
    if options.absorb and qk_norm:
        raise ValueError("MLA with QK-norm cannot absorb its up-projections (the norm spans the content and rotary "
                         "parts of each head's key): decode with absorb=False")
    return (not qk_norm) if options.absorb is None else options.absorb


class Absorbed:
    """The up-projection split per head: W_uk (H, nope, L), W_uv (H, hv, L), the value bias (H, hv) or None."""

    def __init__(self, module: Any) -> None:
        H, nope, hv = module.n_heads, module.nope_dim, module.v_head_dim
        weight = dense_weight(module.kv_up).detach().view(H, nope + hv, -1)
        self.w_uk = weight[:, :nope].contiguous()
        self.w_uv = weight[:, nope:].contiguous()
        bias = module.kv_up.bias
        # the key bias adds q . b_k to every key's score alike: softmax ignores it
        self.b_v = None if bias is None else bias.detach().view(H, nope + hv)[:, nope:].contiguous()


@LAYERS.register("mla")
class LatentKind:
    """Fields `latent` (kv_latent) and `k_rope` (rope_head_dim: rotated when absorbed, raw when expanded)."""

    def prepare(self, module: nn.Module, options: Options) -> Absorbed | None:
        return Absorbed(module) if absorbs(module, options) else None

    def new_state(self, module: nn.Module, aux: Any, batch: int, ctx: StepContext | None, *, window: int | None,
                  options: Options) -> KVState:
        return KVState(TokenBuffer(batch, window=window, slack=options.slack))

    def forward(self, module: Any, aux: Absorbed | None, x: torch.Tensor, state: KVState, ctx: StepContext) -> torch.Tensor:
        B, T, _ = x.shape
        H, nope, rope_dim = module.n_heads, module.nope_dim, module.rope_dim
        assert ctx.rope is not None and ctx.rope_tables is not None, "MLA rotates its rotary part: the model has RoPE"
        q = module.q_norm(module.queries(x).view(B, T, H, nope + rope_dim))  # (B, T, nh, qk)
        latent = module.kv_latent_norm(module.kv_down(x))  # (B, T, L)
        k_rope = module.k_rope(x)  # (B, T, R)
        if aux is not None:
            k_rope = rotate(k_rope[:, :, None], *ctx.rope)[:, :, 0]  # stored rotated at its own position
        new = {"latent": latent, "k_rope": k_rope}
        held, key_positions = store_and_view(state.buffer, new, ctx)
        mask = ctx.mask(key_positions, state.buffer.rolling)
        q_nope, q_rot = q.split([nope, rope_dim], dim=-1)
        q_rot = rotate(q_rot, *ctx.rope)
        if aux is not None:
            y = self._absorbed(module, aux, q_nope, q_rot, held["latent"], held["k_rope"], mask)
        else:
            y = self._expanded(module, q_nope, q_rot, held["latent"], held["k_rope"], key_positions, ctx, mask)
        return module.o_proj(y.reshape(B, T, H * module.v_head_dim))

    @staticmethod
    def _absorbed(module: Any, aux: Absorbed, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor,
                  k_rot: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        w_uk, w_uv = aux.w_uk.to(q_nope.dtype), aux.w_uv.to(q_nope.dtype)
        q_latent = torch.einsum("bthn,hnl->bhtl", q_nope, w_uk)  # (B, nh, T, L): the query in the latent space
        query = torch.cat([q_latent, q_rot.transpose(1, 2)], dim=-1)  # (B, nh, T, L + R)
        keys = torch.cat([latents, k_rot.to(latents.dtype)], dim=-1)[:, None]  # (B, 1, S, L + R): one shared key head
        scale = 1.0 / math.sqrt(module.nope_dim + module.rope_dim)  # the training forward's 1/sqrt(qk)
        mixed = attend(query, keys, latents[:, None], mask, scale=scale)  # (B, nh, T, L): weighted latents
        y = torch.einsum("bhtl,hvl->bthv", mixed, w_uv)  # (B, T, nh, hv)
        return y if aux.b_v is None else y + aux.b_v.to(y.dtype)

    @staticmethod
    def _expanded(module: Any, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor, k_rope: torch.Tensor,
                  key_positions: torch.Tensor, ctx: StepContext, mask: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = latents.shape
        H, nope, rope_dim, hv = module.n_heads, module.nope_dim, module.rope_dim, module.v_head_dim
        kv = module.kv_up(latents).view(B, S, H, nope + hv)
        k_nope, v = kv.split([nope, hv], dim=-1)
        k_shared = k_rope.view(B, S, 1, rope_dim).expand(B, S, H, rope_dim)
        k = module.k_norm(torch.cat([k_nope, k_shared], dim=-1))  # (B, S, nh, qk)
        k_nope, k_rot = k.split([nope, rope_dim], dim=-1)
        assert ctx.rope_tables is not None
        where = key_positions.clamp(min=0)
        k_rot = rotate(k_rot, ctx.rope_tables[0][where], ctx.rope_tables[1][where])
        q = torch.cat([q_nope, q_rot], dim=-1).transpose(1, 2)  # (B, nh, T, qk)
        k = torch.cat([k_nope, k_rot], dim=-1).transpose(1, 2)
        return attend(q, k, v.transpose(1, 2), mask).transpose(1, 2)  # (B, T, nh, hv)
