"""The cached forward the ONNX export traces with `with_cache`: new tokens over earlier keys and values.

    CachedDecoder(model)(input_ids (B, T), past) -> (logits (B, T, vocab), presents)

`past` holds, for every layer, its keys and values of the P tokens before these (P may be 0):
(B, n_kv, P, head_dim) and (B, n_kv, P, v_head_dim), keys after QK-norm and RoPE, as tabula's cached
inference layers (runtime/inference/attention.py) keep them; `presents` the same of the P + T tokens.
The new tokens sit at positions P..P+T-1 (RoPE's and learned positions' offset, read from the past's
length) and see the keys their layer's pattern allows (causal, sliding window, global tokens, strides:
masks.MaskPattern.allows over positions), so the presents hold every token's keys, a windowed layer's
too (the graph does not roll them). MLA's keys and values are cached expanded per head, as transformers'
DeepSeek-V3 caches them (its latent is not what the graph returns). Every row of a batch has the same P
(no padding mask).

Plain PyTorch over the model's own submodules (projections, norms, positions, MLPs): the same weights
and operations as Transformer.forward, which the parity test compares against at every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tabula.schemas.blocks.sparsity import MaskPattern

from .blocks.attention import CausalSelfAttention, attend
from .blocks.mla import LatentAttention
from .blocks.transformer import TransformerBlock

if TYPE_CHECKING:
    from .model import Transformer

__all__ = ["CachedDecoder", "cache_names", "cache_shapes"]

KV = tuple[torch.Tensor, torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor] | None


def cache_names(n_layers: int) -> tuple[list[str], list[str]]:
    """The graph's cache input and output names, as Hugging Face Optimum names them: past_key_values.<i>.key,
    past_key_values.<i>.value, ... and present.<i>.key, present.<i>.value, ... (layer by layer)."""
    inputs = [f"past_key_values.{i}.{part}" for i in range(n_layers) for part in ("key", "value")]
    outputs = [f"present.{i}.{part}" for i in range(n_layers) for part in ("key", "value")]
    return inputs, outputs


def cache_shapes(model: Transformer) -> list[tuple[int, int, int]]:
    """Each layer's (cached heads, key width, value width)."""
    shapes = []
    for _, attn in _layers(model):
        if isinstance(attn, LatentAttention):
            shapes.append((attn.n_heads, attn.head_dim, attn.v_head_dim))
        else:
            shapes.append((attn.n_kv_heads, attn.head_dim, attn.head_dim))
    return shapes


def _layers(model: Transformer) -> list[tuple[TransformerBlock, CausalSelfAttention | LatentAttention]]:
    """Each layer's block and attention module (onnx_problems refuses layers other than transformer blocks)."""
    found = []
    for i, block in enumerate(model.blocks):
        attn = block.attn if isinstance(block, TransformerBlock) else None
        if not isinstance(block, TransformerBlock) or not isinstance(attn, CausalSelfAttention | LatentAttention):
            raise TypeError(f"layer {i} ({type(block).__name__}) has no attention with a cached ONNX graph")
        found.append((block, attn))
    return found


def _heads(attn: CausalSelfAttention, x: torch.Tensor, rope: Rope, past: KV, mask: torch.Tensor) -> tuple[torch.Tensor, KV]:
    """mha, gqa, mqa: CausalSelfAttention.forward with the past's keys and values before the new ones."""
    B, T, _ = x.shape
    q, k, v = attn.project(x, rope)  # (B, T, nh, hs), (B, T, n_kv, hs) twice
    keys = torch.cat([past[0], k.transpose(1, 2)], dim=2)  # (B, n_kv, P + T, hs)
    values = torch.cat([past[1], v.transpose(1, 2)], dim=2)
    y = attend(q.transpose(1, 2), keys, values, mask, 0.0)  # (B, nh, T, hs)
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, attn.n_heads * attn.head_dim)), (keys, values)


def _latent(attn: LatentAttention, x: torch.Tensor, rope: Rope, past: KV, mask: torch.Tensor) -> tuple[torch.Tensor, KV]:
    """MLA: LatentAttention.forward with the past's per-head keys (nope | rope) and values before the new ones."""
    assert rope is not None, "MLA rotates its rope part: the model has RoPE"
    B, T, _ = x.shape
    q, k, v = attn.project(x, rope)  # (B, T, nh, qk) twice, (B, T, nh, hv)
    keys = torch.cat([past[0], k.transpose(1, 2)], dim=2)  # (B, nh, P + T, qk)
    values = torch.cat([past[1], v.transpose(1, 2)], dim=2)  # (B, nh, P + T, hv)
    y = attend(q.transpose(1, 2), keys, values, mask, 0.0)  # (B, nh, T, hv)
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, attn.n_heads * attn.v_head_dim)), (keys, values)


def _mask(pattern: MaskPattern, past_len: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """(T, P + T) boolean, True where new token P + t may see key position s."""
    query = torch.arange(seq_len, device=device)[:, None] + past_len
    key = torch.arange(past_len + seq_len, device=device)[None, :]
    mask: torch.Tensor = pattern.allows(query, key)
    return mask


class CachedDecoder(nn.Module):
    """forward(input_ids (B, T), past: one (keys, values) a layer) -> (logits (B, T, vocab), presents:
    one (keys, values) a layer over P + T tokens). Transformer blocks only (onnx_problems refuses the rest)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past: tuple[KV, ...]) -> tuple[torch.Tensor, tuple[KV, ...]]:
        model, T = self.model, input_ids.size(1)
        P = past[0][0].size(2)  # the tokens before these
        x, rope = model.pos_embed(model.embed(input_ids), offset=P)  # (B, T, C); RoPE's (cos, sin) of positions P..P+T-1
        masks = {pattern: _mask(pattern, P, T, input_ids.device) for pattern, _ in dict.fromkeys(model.layer_masks)}
        presents = []
        for i, (block, attn) in enumerate(_layers(model)):
            mask = masks[model.layer_masks[i][0]]  # P and T are the exporter's symbols: one mask a pattern, in the graph
            h = block.attn_norm(x)
            if isinstance(attn, LatentAttention):
                y, present = _latent(attn, h, rope, past[i], mask)
            else:
                y, present = _heads(attn, h, rope, past[i], mask)
            x = x + y
            x = x + block.mlp(block.mlp_norm(x))
            presents.append(present)
        logits: torch.Tensor = model.lm_head(model.norm(x))  # (B, T, vocab)
        return logits, tuple(presents)
