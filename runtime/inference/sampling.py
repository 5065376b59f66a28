"""Sampling: what the next token is, given the logits of one row.

`SamplingParams` (frozen) says how; `Sampler(params)` holds one sequence's state (its seeded generator,
the tokens it has seen for the repetition penalty) and draws with `sample(logits) -> (token, logprob)`.
Order of the processors (as transformers applies them): repetition penalty, temperature, top-k, top-p,
min-p. temperature 0 is greedy (the argmax; top-k/p and min-p change nothing then).

The log-probability reported with a token is the model's own (log_softmax of the raw logits), which
does not depend on the sampling settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to choose tokens and when to stop.

    max_new_tokens: most tokens generated; temperature: 0 greedy, else logits / temperature;
    top_k: keep the k likeliest (0: all); top_p: the smallest set whose probability reaches p (1: all);
    min_p: drop tokens less likely than min_p x the likeliest's probability (0: none);
    repetition_penalty: > 1 makes tokens of the prompt and of the output less likely (CTRL's, as
    transformers: a positive logit divided by it, a negative one multiplied); stop: strings ending the
    output (not included in it); stop_token_ids: ids ending it (the end-of-text id is added by the
    Generator unless ignore_eos); seed: the sampling is reproducible with one (None: torch's default
    generator); logprobs: the chosen token's log-probability in every chunk; top_logprobs: also the n
    likeliest tokens' (id, log-probability)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    top_logprobs: int = 0
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be >= 0 (got {self.max_new_tokens})")
        if not (0 <= self.temperature < math.inf):  # written so that NaN fails too
            problems.append(f"temperature must be a finite number >= 0 (got {self.temperature})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1) (got {self.min_p})")
        if not (0 < self.repetition_penalty < math.inf):
            problems.append(f"repetition_penalty must be a finite number > 0 (got {self.repetition_penalty})")
        if any(not s for s in self.stop):
            problems.append("a stop string must not be empty")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (vocab,) in fp32 after the repetition penalty (over `seen` ids), temperature, top-k,
    top-p and min-p; removed tokens are -inf. Greedy leaves the order alone (penalty applied only)."""
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= params.top_p  # keep up to and including the token reaching p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    """One sequence's sampling: seeded generator (CPU), tokens seen (prompt and output) for the penalty."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int] | None = None) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(params.seed)
        self.seen: list[int] = list(prompt_ids or [])

    def sample(self, logits: torch.Tensor) -> tuple[int, float, list[tuple[int, float]]]:
        """(token id, its log-probability under the model, the top_logprobs likeliest (id, log-probability))."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        need_seen = self.params.repetition_penalty != 1.0
        seen = torch.tensor(sorted(set(self.seen)), dtype=torch.long, device=logits.device) if need_seen and self.seen else None
        scores = process(logits, self.params, seen)
        if self.params.greedy:
            token = int(scores.argmax())
        else:
            probs = scores.softmax(-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.seen.append(token)
        top: list[tuple[int, float]] = []
        if self.params.top_logprobs:
            values, ids = torch.topk(logprobs, min(self.params.top_logprobs, logprobs.numel()))
            top = list(zip(ids.tolist(), values.tolist()))
        return token, float(logprobs[token]), top
