"""Attention masks, dense or FlexAttention block masks, from one pattern (schemas/blocks/sparsity.py).

Both come from `MaskPattern.allows` over query and key positions, with document ids (tokens see only
their own document) and virtual positions (prompt or prefix tuning: keys every token sees, whatever
its document; queries too unless `keys_only`), so the dense mask is the block mask's reference.

    dense_mask(...) -> (Q, K) or (B, 1, Q, K) boolean tensor (True: may attend), or None (plain causal)
    block_mask(...) -> a BlockMask over (B or 1, 1, Q, K), or None (plain causal)
    attention_mask(..., backend) -> whichever the backend and the device can run

FlexAttention has no backward on the CPU (torch 2.13 raises), so there a forward that records
gradients takes the dense mask of the same pattern; evaluation and sampling take the block mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from tabula.schemas.blocks.sparsity import MaskPattern

Mask = torch.Tensor | BlockMask

# Devices where FlexAttention runs forward only (its backward raises there).
FORWARD_ONLY = ("cpu", "mps")


def pattern_of(window: int | None | MaskPattern) -> MaskPattern:
    return window if isinstance(window, MaskPattern) else MaskPattern(window)


def dense_mask(seq_len: int, window: int | None | MaskPattern, document_ids: torch.Tensor | None, device: torch.device, *,
               virtual: int = 0, keys_only: bool = False) -> torch.Tensor | None:
    """The boolean mask (True: may attend) of `window` (a window width, or a whole pattern) over
    seq_len tokens after `virtual` positions, with optional document ids (B, T). None where plain
    causal attention suffices. (n + T, n + T), or (B, 1, n + T, n + T) with document ids; only the
    T tokens' query rows with `keys_only` (a prefix)."""
    pattern, total = pattern_of(window), virtual + seq_len
    if pattern.plain(total) and document_ids is None and not keys_only:
        return None
    query = torch.arange(total, device=device)[:, None]
    key = torch.arange(total, device=device)[None, :]
    mask = pattern.allows(query, key)  # (n + T, n + T)
    if document_ids is not None:
        documents = _with_virtual(document_ids, virtual)
        same_document = (documents[:, :, None] == documents[:, None, :]) | (key < virtual)  # (B, n + T, n + T)
        mask = (mask & same_document)[:, None]  # (B, 1, n + T, n + T)
    return mask[..., virtual:, :] if keys_only else mask


def block_mask(seq_len: int, pattern: MaskPattern, document_ids: torch.Tensor | None, device: torch.device, *,
               virtual: int = 0, keys_only: bool = False) -> BlockMask | None:
    """The FlexAttention block mask of the same pairs as `dense_mask`; None for plain causal attention."""
    total = virtual + seq_len
    if pattern.plain(total) and document_ids is None and not keys_only:
        return None
    offset = virtual if keys_only else 0  # the queries' first position
    documents = None if document_ids is None else _with_virtual(document_ids, virtual)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q = q_idx + offset
        allowed = pattern.allows(q, kv_idx)
        if documents is not None:
            allowed = allowed & ((documents[b, q] == documents[b, kv_idx]) | (kv_idx < virtual))
        return allowed

    batch = None if documents is None else documents.size(0)
    # On GPUs the mask is compiled: eagerly it is evaluated over the whole (B, Q, K) grid at once
    compiled = device.type == "cuda" and not torch.compiler.is_compiling()
    return create_block_mask(mask_mod, batch, None, total - offset, total, device=device, _compile=compiled)


def attention_mask(seq_len: int, pattern: MaskPattern, document_ids: torch.Tensor | None, device: torch.device, *,
                   backend: str = "sdpa", virtual: int = 0, keys_only: bool = False) -> Mask | None:
    """The mask for `backend` (sdpa: dense; flex: a block mask, or the dense one where FlexAttention
    cannot run this forward: the CPU recording gradients)."""
    if runs_flex(backend, device):
        return block_mask(seq_len, pattern, document_ids, device, virtual=virtual, keys_only=keys_only)
    return dense_mask(seq_len, pattern, document_ids, device, virtual=virtual, keys_only=keys_only)


def runs_flex(backend: str, device: torch.device) -> bool:
    """Whether a forward with `backend` on `device` runs FlexAttention now."""
    return backend == "flex" and (device.type not in FORWARD_ONLY or not torch.is_grad_enabled())


def _with_virtual(document_ids: torch.Tensor, virtual: int) -> torch.Tensor:
    """Document ids with `virtual` positions first, a document of their own (-1) that every document sees."""
    if not virtual:
        return document_ids
    seen = torch.full((document_ids.size(0), virtual), -1, dtype=document_ids.dtype, device=document_ids.device)
    return torch.cat([seen, document_ids], dim=1)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """FlexAttention of (B, nh, Q, hs) queries over (B, n_kv, K, hs) keys and (B, n_kv, K, hv) values;
    shared key/value heads stay shared. Compiled on GPUs (eager FlexAttention materialises the scores);
    inside a compiled region the region's compile covers it; eager on the CPU, where compiling a
    forward-only kernel costs more than it saves."""
    gqa = k.size(1) != q.size(1)
    out: torch.Tensor
    if torch.compiler.is_compiling():
        out = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    elif q.device.type in FORWARD_ONLY:
        with warnings.catch_warnings():  # "called without torch.compile": known, and what the CPU wants
            warnings.simplefilter("ignore", UserWarning)
            out = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    else:
        out = _compiled_flex()(q, k, v, block_mask=mask, enable_gqa=gqa)
    return out  # (B, nh, Q, hv)


@cache
def _compiled_flex() -> Callable[..., Any]:
    return torch.compile(flex_attention, dynamic=False)
