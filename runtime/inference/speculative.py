"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one forward pass.

    decoder = SpeculativeDecoder(Decoder(target), Decoder(draft), k=4)
    for token, logprob in decoder.generate(prompt_ids, SamplingParams(temperature=0.8, seed=1)):
        ...
    decoder.stats.acceptance_rate       # accepted draft tokens / proposed draft tokens

One round, with both caches holding the context but its last token `last` (Leviathan et al. 2023,
"Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large
Language Model Decoding with Speculative Sampling"):

1. the draft feeds `last` (and whatever it has not seen yet) and proposes x_1..x_k one step at a time,
   each from its own distribution q_i (the sampling settings applied to its logits);
2. the target feeds [last, x_1..x_k] in one pass: its distributions p_1..p_{k+1};
3. greedy: x_i is accepted while it is the target's argmax, and the first miss is replaced by the
   target's argmax, so the output is the target's own greedy output token for token. Sampling: x_i is
   accepted with probability min(1, p_i(x_i) / q_i(x_i)); the first rejected one is replaced by a draw from
   norm(max(0, p_i - q_i)); when all k pass, a bonus token is drawn from p_{k+1}. Each emitted token is then
   distributed exactly as the target's own sampling would draw it;
4. both caches roll back past the accepted tokens (Cache.rollback).

A round emits between 1 and k + 1 tokens for one target pass. Batch of one sequence.
"""

from __future__ import annotations

from collections.abc import Collection, Generator as Stream, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import RunInputError
from .decoder import ContextFull, Decoder
from .generator import Chunk, Generator, Sequence
from .sampling import SamplingParams, process


class DraftRefused(RunInputError):
    """A draft model that cannot draft for this target: another tokenizer or vocabulary."""


@dataclass
class SpeculativeStats:
    """Counts over a generation: `rounds` (target passes), `proposed` and `accepted` draft tokens."""

    rounds: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when none was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens emitted per target pass: accepted drafts plus the one the target adds each round."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0


def check_draft(target_vocab: dict[str, int], draft_vocab: dict[str, int]) -> None:
    """Raises DraftRefused unless the two tokenizers map the same strings to the same ids (`get_vocab()`)."""
    if target_vocab != draft_vocab:
        differ = sum(1 for piece, i in target_vocab.items() if draft_vocab.get(piece) != i) + len(draft_vocab.keys() - target_vocab.keys())
        raise DraftRefused(f"the draft model has another tokenizer than the target ({len(draft_vocab)} vs {len(target_vocab)} "
                           f"tokens, {differ} that differ): speculative decoding needs the draft to share the target's tokenizer")


def accept(p: torch.Tensor, q: torch.Tensor, drafted: list[int], *, greedy: bool,
           generator: torch.Generator | None = None) -> tuple[int, int]:
    """The verification of one round: p (k+1, vocab) the target's probabilities (greedy: its scores) at each
    drafted position and after the last, q (k, vocab) the draft's, `drafted` its k tokens. Returns (n, token):
    the first n drafted tokens are kept, then `token` (the target's correction, or its bonus after all k)."""
    k = len(drafted)
    for i, x in enumerate(drafted):
        if greedy:
            best = int(p[i].argmax())
            if x != best:
                return i, best
            continue
        if float(torch.rand((), generator=generator)) * float(q[i, x]) >= float(p[i, x]):  # rejected: u >= p/q
            residual = (p[i] - q[i]).clamp(min=0)
            total = float(residual.sum())
            # p == q to rounding (rejection then has probability ~0): draw from p itself
            return i, int(torch.multinomial(residual / total if total > 0 else p[i], 1, generator=generator))
    if greedy:
        return k, int(p[k].argmax())
    return k, int(torch.multinomial(p[k], 1, generator=generator))


class SpeculativeDecoder:
    """Speculative generation of one sequence from `target` (Decoder) with `draft` (Decoder, same vocabulary)
    proposing `k` tokens a round. `stats` counts the latest generation's rounds and acceptances."""

    def __init__(self, target: Decoder, draft: Decoder, k: int = 4) -> None:
        target_vocab, draft_vocab = int(getattr(target.model, "vocab_size")), int(getattr(draft.model, "vocab_size"))
        if target_vocab != draft_vocab:
            raise DraftRefused(f"the draft model's vocabulary has {draft_vocab} tokens, the target's {target_vocab}: "
                               "speculative decoding needs the draft to share the target's tokenizer")
        slack = min(target.options.slack, draft.options.slack)
        if not 1 <= k <= slack:
            raise ValueError(f"draft k must be 1..{slack} (the tokens a rolling-window cache can roll back), not {k}")
        self.target, self.draft, self.k = target, draft, k
        self.stats = SpeculativeStats()
        self.context_full = False  # the latest generation ended at the end of the target's context

    @torch.no_grad()
    def generate(self, prompt: list[int], params: SamplingParams, *, stop_ids: Collection[int] = ()) -> Stream[tuple[int, float], None, None]:
        """Yields (token, its log-probability under the target's raw logits) up to params.max_new_tokens,
        or until the target's context is full (`context_full` tells). A stop token (params.stop_token_ids,
        `stop_ids`) ends it, yielded last; stop strings are the caller's. Raises ContextFull for a prompt
        that does not fit the target's context."""
        if not prompt:
            raise ValueError("speculative decoding needs a prompt of at least one token")
        if len(prompt) + self.target.n_virtual > self.target.max_len:
            raise ContextFull(f"a prompt of {len(prompt)} tokens does not fit the target's context of {self.target.max_len}")
        self.stats = SpeculativeStats()
        self.context_full = False
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        target_cache, draft_cache = self.target.new_cache(1), self.draft.new_cache(1)
        if len(prompt) > 1:
            self.target.prefill(target_cache, [prompt[:-1]])
        draft_fits = len(prompt) + self.draft.n_virtual <= self.draft.max_len
        if draft_fits and len(prompt) > 1:
            self.draft.prefill(draft_cache, [prompt[:-1]])
        seen = list(prompt)  # the repetition penalty's tokens: the prompt and the output so far
        pending = [prompt[-1]]  # tokens the draft has not fed yet (the last one is the context's last)
        stops = set(params.stop_token_ids) | set(stop_ids)
        emitted = 0
        while emitted < params.max_new_tokens:
            target_room = self.target.max_len - int(target_cache.lengths[0]) - 1  # after feeding `last`
            if target_room < 0:
                self.context_full = True
                return
            draft_room = self.draft.max_len - int(draft_cache.lengths[0]) - len(pending) + 1 if draft_fits else 0
            k = max(0, min(self.k, params.max_new_tokens - emitted - 1, target_room, draft_room))
            drafted, q = self._propose(draft_cache, pending, k, params, seen, generator)
            logits = self.target.forward(target_cache, torch.tensor([[seen[-1], *drafted]], device=self.target.device))[0]
            p = torch.stack([self._distribution(logits[i], params, seen + drafted[:i]) for i in range(k + 1)])
            n, token = accept(p, q, drafted, greedy=params.greedy, generator=generator)
            self.stats.rounds += 1
            self.stats.proposed += k
            self.stats.accepted += n
            target_cache.rollback(k - n)  # it fed last and the k drafts; keep last and the n accepted
            if k:  # the draft fed pending and drafts 1..k-1
                fed = k - 1
                draft_cache.rollback(max(0, fed - n))
                pending = [drafted[k - 1], token] if n == k else [token]
            else:  # the draft fed nothing this round
                pending = [*pending, token]
            logprobs = torch.log_softmax(logits[: n + 1].float(), dim=-1)
            for i, out in enumerate([*drafted[:n], token]):
                seen.append(out)
                emitted += 1
                yield out, float(logprobs[i, out])
                if out in stops or emitted >= params.max_new_tokens:
                    return

    def _propose(self, cache, pending: list[int], k: int, params: SamplingParams, seen: list[int],
                 generator: torch.Generator | None) -> tuple[list[int], torch.Tensor]:
        """The draft's k tokens and their distributions q (k, vocab), after feeding `pending`."""
        drafted: list[int] = []
        q = []
        if k == 0:
            return drafted, torch.empty(0)
        logits = self.draft.forward(cache, torch.tensor([pending], device=self.draft.device), last_only=True)[0]
        for i in range(k):
            dist = self._distribution(logits, params, seen + drafted)
            token = int(dist.argmax()) if params.greedy else int(torch.multinomial(dist, 1, generator=generator))
            drafted.append(token)
            q.append(dist)
            if i < k - 1:
                logits = self.draft.step(cache, [token])[0]
        return drafted, torch.stack(q)

    @staticmethod
    def _distribution(logits: torch.Tensor, params: SamplingParams, seen: list[int]) -> torch.Tensor:
        """Greedy: the processed scores (argmax is all that counts); sampling: probabilities, on the CPU."""
        penalty = params.repetition_penalty != 1.0
        ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device) if penalty and seen else None
        scores = process(logits, params, ids).cpu()
        return scores if params.greedy else scores.softmax(-1)


class SpeculativeGenerator(Generator):
    """A Generator (same arguments) whose sequences are decoded speculatively, `draft` (a model of the same
    vocabulary) proposing `k` tokens a round; the rows of a batch are decoded one after another, and a row
    reaching the end of the context ends there (finish_reason "context"; no sliding). `stats` sums every
    sequence's rounds and acceptances since it was built."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, draft: nn.Module, k: int = 4, **options: Any) -> None:
        super().__init__(model, tokenizer, **options)
        self.speculative = SpeculativeDecoder(self.decoder, Decoder(draft.eval(), slack=self.decoder.options.slack), k)
        self.stats = SpeculativeStats()

    def run(self, sequences: list[Sequence]) -> Iterator[Chunk]:
        for sequence in sequences:
            if sequence.params.max_new_tokens == 0:
                sequence.finish_reason = "length"
                continue
            tokens = self.speculative.generate(sequence.prompt_ids, sequence.params, stop_ids=sequence.stop_ids)
            try:
                for token, logprob in tokens:
                    yield sequence.accept(token, logprob)
                    if sequence.finished:
                        break
                if not sequence.finished:
                    yield sequence.end("context")
            finally:
                tokens.close()
                done = self.speculative.stats
                self.stats.rounds += done.rounds
                self.stats.proposed += done.proposed
                self.stats.accepted += done.accepted
