"""The uncached reference: greedy decoding that recomputes the whole context for every token.

What the training sample did before the cache (it was compiler/model.py's `generate`). It stays as the
baseline the tests and the bench compare the cached Decoder with, and for engines whose weights only
exist inside the model's own forward (DeepSpeed ZeRO-3 gathers them around module calls)."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def recompute_greedy(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation: (B, T) prompt ids -> (B, T + max_new_tokens) ids, no cache; the context is
    cropped to the last max_seq_len tokens (less the virtual tokens). Runs in eval mode, then restores it."""
    was_training = model.training
    model.eval()
    ids = input_ids
    context = int(model.max_seq_len) - int(model.n_virtual)
    try:
        for _ in range(max_new_tokens):
            logits = model(ids[:, -context:])
            ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    finally:
        model.train(was_training)
    return ids
