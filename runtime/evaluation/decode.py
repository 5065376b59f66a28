"""Greedy decoding for the harness's generate_until: until a stop string or token, at most
`max_new_tokens`. Recomputes the context at each token (no cache): the inference package's Generator
replaces this once it is merged (docs/interfaces.md, runtime/inference)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


@torch.no_grad()
def greedy_until(model: torch.nn.Module, ids: Sequence[int], decode: Callable[[Sequence[int]], str], *,
                 until: Sequence[str], max_new_tokens: int, stop_ids: set[int], device: torch.device | str = "cpu") -> str:
    """The continuation's text, cut before the first stop string (a stop token ends it too)."""
    context = model.max_seq_len - getattr(model, "n_virtual", 0)
    tokens = list(ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        window = torch.tensor([tokens[-context:]], device=device)
        next_id = int(model(window)[0, -1].argmax())
        if next_id in stop_ids:
            break
        new.append(next_id)
        tokens.append(next_id)
        text = decode(new)
        if any(stop in text for stop in until):
            break
    return cut_at_stops(decode(new), until)


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the earliest stop string."""
    cuts = [text.index(stop) for stop in until if stop and stop in text]
    return text[: min(cuts)] if cuts else text
