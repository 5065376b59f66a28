"""Perplexity of a model over held-out batches: what a quantization or a draft model costs in quality.

    ppl = perplexity(model, validation_batches(prepared, tokens=32_768, seq_len=256, batch_size=8))
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampler import Batch


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """exp(mean cross-entropy) of `model` over every counted target of `batches` (targets -100 left out;
    document masking as the batches say), token-weighted. Runs in eval mode, then restores the mode.
    Raises ValueError when the batches hold no target."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches:
            documents = batch.document_ids.to(device) if batch.document_ids is not None else None
            logits = model(batch.input_ids.to(device), document_ids=documents)  # (B, T, vocab)
            targets = batch.targets.to(device)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no target tokens to measure perplexity on")
    return math.exp(total / count)
