"""A rendered conversation's tokens and loss mask: which tokens are trained on, and the cut to
`data.chat.max_tokens`. Pure numpy; the tokenizer workers call it.

A token is trained on when it starts inside a trained character span (the assistant's message and
its end-of-turn token). Every conversation ends with the end-of-document token (appended where the
template did not end with it), which separates packed conversations and is not trained on unless
the template wrote it at the end of the assistant's turn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def trained_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Sequence[int]]) -> np.ndarray:
    """(n_tokens,) uint8: 1 for a token whose first character lies in one of the [start, end) `spans`."""
    starts = np.fromiter((start for start, _ in offsets), dtype=np.int64, count=len(offsets))
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        mask |= (starts >= start) & (starts < end)
    return mask.astype(np.uint8)


def fit(ids: Sequence[int], mask: np.ndarray, eos_id: int, max_tokens: int | None, truncation: str
        ) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The conversation's tokens and mask ending with `eos_id`, cut to `max_tokens` in all (the
    end-of-document token included) on the `truncation` side (left | right): returns (ids, mask,
    whether it was cut), or None where no trained token is left."""
    ids = np.asarray(ids, dtype=np.int64)
    ends_with_eos = len(ids) > 0 and ids[-1] == eos_id
    cut = max_tokens is not None and len(ids) + (not ends_with_eos) > max_tokens
    if cut:
        keep = max_tokens - 1  # room for the end-of-document token
        ids, mask = (ids[:keep], mask[:keep]) if truncation == "right" else (ids[len(ids) - keep :], mask[len(mask) - keep :])
        ends_with_eos = False
    if not ends_with_eos:
        ids, mask = np.append(ids, eos_id), np.append(mask, np.uint8(0))
    if not mask.any():
        return None
    return ids, mask.astype(np.uint8), cut
