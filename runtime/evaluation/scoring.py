"""Log-probabilities of target tokens from plain forward passes, batched: what lm-eval's loglikelihood
requests and a text's perplexity both need. A request is a token sequence and the index from which its
tokens are scored; sequences longer than the model's context are scored in windows (each window
conditioned on the tokens before it, up to the context length)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class Scored:
    """The scored tokens of one request: their log-probabilities and whether each was the argmax."""

    logprobs: tuple[float, ...]
    greedy: tuple[bool, ...]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def all_greedy(self) -> bool:
        return all(self.greedy)


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: Sequence[tuple[list[int], int]], *, batch_size: int,
                  device: torch.device | str = "cpu") -> list[Scored]:
    """`windows`: (tokens, first): score tokens[first:] given what comes before each (first >= 1). Each
    window must fit the model's context plus one (the last token is only a target). Batched by length,
    longest first; results in the order given."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    results: list[Scored | None] = [None] * len(windows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = len(windows[chunk[0]][0]) - 1
        inputs = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            tokens = windows[index][0]
            inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        logits = model(inputs.to(device)).float()  # (B, T, vocab)
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logits.argmax(dim=-1)  # (B, T)
        for row, index in enumerate(chunk):
            tokens, first = windows[index]
            targets = torch.tensor(tokens[first:], device=logprobs.device)
            positions = torch.arange(first - 1, len(tokens) - 1, device=logprobs.device)
            picked = logprobs[row, positions, targets]
            results[index] = Scored(tuple(picked.tolist()), tuple((best[row, positions] == targets).tolist()))
    return [result for result in results if result is not None]


def context_windows(tokens: list[int], first: int, context: int) -> list[tuple[list[int], int]]:
    """Split the scoring of tokens[first:] into windows of at most `context` + 1 tokens, each starting up
    to `context` tokens before the first token it scores (so every token sees as much as fits)."""
    windows = []
    position = first
    while position < len(tokens):
        end = min(len(tokens), position + context)
        begin = max(0, end - context - 1)
        windows.append((tokens[begin:end], position - begin))
        position = end
    return windows


def join(scored: Iterable[Scored]) -> Scored:
    logprobs: tuple[float, ...] = ()
    greedy: tuple[bool, ...] = ()
    for part in scored:
        logprobs += part.logprobs
        greedy += part.greedy
    return Scored(logprobs, greedy)
