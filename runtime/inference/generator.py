"""Generator: prompts in, tokens and text out (all at once or streamed), over a Decoder and its Cache.

    generator = Generator(model, tokenizer, eos_id=0, start_ids=[0])
    completion = generator.generate("def ", SamplingParams(max_new_tokens=32, temperature=0.8, seed=1))
    for chunk in generator.stream(["a", "bb"], SamplingParams(stop=("\\n",))):
        print(chunk.index, chunk.text, chunk.logprob, chunk.finish_reason)

Prompts of different lengths share one batch (one padded prefill, then one token a row a step); a row
that finishes leaves the batch (`Cache.select`). `Sequence` is one request's state (sampler,
detokenizer, stops): a scheduler of its own (the server's continuous batching) drives Decoder steps
and feeds each row's logits to its Sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import RunInputError
from .cache import Cache
from .decoder import Decoder
from .detok import IncrementalDecoder, StopText
from .sampling import Sampler, SamplingParams


class PromptTooLong(RunInputError):
    """A prompt leaves no room in the model's context (on_long_prompt="refuse")."""


class UnknownToken(RunInputError):
    """A prompt id outside the model's vocabulary."""


@dataclass
class Chunk:
    """One generated token of row `index`: its id, `text` (the whole characters it completes, stop strings
    held back: may be ""), its log-probability, the top log-probabilities asked for, and `finish_reason`
    on a row's last chunk: "stop" (a stop string or id), "length" (max_new_tokens) or "context" (the
    model's context is full). A finishing chunk may carry text and no token (token -1)."""

    index: int
    token: int
    text: str
    logprob: float | None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Completion:
    """A row's whole output: prompt and new ids, the text (up to a stop string), each new token's
    log-probability, why it ended, the stop string or id met (or None), prompt ids dropped to fit."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    stop: str | int | None = None
    truncated: int = 0
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


class Sequence:
    """One request's decoding state. `choose(logits)` samples its next token and returns the Chunk(s) to
    emit; `finished` once a stop, its length or the context ends it."""

    def __init__(self, index: int, prompt_ids: list[int], params: SamplingParams, *, tokenizer: Any = None,
                 stop_ids: tuple[int, ...] = ()) -> None:
        self.index, self.prompt_ids, self.params = index, list(prompt_ids), params
        self.sampler = Sampler(params, prompt_ids)
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids) if tokenizer is not None else None
        self.stops = StopText(params.stop)
        self.stop_ids = set(params.stop_token_ids) | set(stop_ids)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self.finish_reason: str | None = None
        self.stop: str | int | None = None
        self.truncated = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def plain_greedy(self) -> bool:
        """The argmax of the raw logits, no top log-probabilities: rows like this are chosen together (choose_rows)."""
        return self.params.greedy and self.params.repetition_penalty == 1.0 and not self.params.top_logprobs

    @property
    def ids(self) -> list[int]:
        """Prompt and output ids."""
        return self.prompt_ids + self.tokens

    def choose(self, logits: torch.Tensor) -> Chunk:
        """Samples the next token from this row's logits (vocab,) and records it."""
        token, logprob, top = self.sampler.sample(logits)
        return self.accept(token, logprob, top)

    def accept(self, token: int, logprob: float | None, top: list[tuple[int, float]] | None = None) -> Chunk:
        """Records a token chosen elsewhere (speculative decoding's verified tokens)."""
        if token in self.stop_ids:
            self.finish_reason, self.stop = "stop", token
            text, _ = self.stops.feed(self._flush(), final=True)
            return Chunk(self.index, token, text, logprob, top or [], "stop")
        self.tokens.append(token)
        self.logprobs.append(float(logprob) if logprob is not None else float("nan"))
        self.top.append(top or [])
        piece = self.decoder.push(token) if self.decoder is not None else ""
        last = len(self.tokens) >= self.params.max_new_tokens
        if last:
            piece += self._flush()
        text, stopped = self.stops.feed(piece, final=last)
        if stopped:
            self.finish_reason, self.stop = "stop", self.stops.matched
        elif last:
            self.finish_reason = "length"
        return Chunk(self.index, token, text, logprob, top or [], self.finish_reason)

    def end(self, reason: str) -> Chunk:
        """Ends the sequence from outside (the context is full): the text still held, no token."""
        self.finish_reason = reason
        text, _ = self.stops.feed(self._flush(), final=True)
        return Chunk(self.index, -1, text, None, [], reason)

    def _flush(self) -> str:
        return self.decoder.flush() if self.decoder is not None else ""

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        return Completion(self.prompt_ids, list(self.tokens), self.stops.output, list(self.logprobs), self.finish_reason,
                          self.stop, self.truncated, list(self.top))


class Generator:
    """Generation from a tabula Transformer (put in eval mode). tokenizer: a `tokenizers.Tokenizer` (None:
    ids only, no text); eos_id: an id that ends the output (unless SamplingParams.ignore_eos); start_ids:
    ids put before every text prompt (a tabula model saw documents begin after its end-of-text id);
    absorb, slack: the Decoder's; on_context_full: "stop" (finish_reason "context") or "slide" (each
    further token recomputed from the last max_seq_len ids, as the uncached greedy sample always did)."""

    def __init__(self, model: Any, tokenizer: Any = None, *, eos_id: int | None = None, start_ids: list[int] | None = None,
                 absorb: bool | None = None, slack: int = 16, on_context_full: str = "stop") -> None:
        if on_context_full not in ("stop", "slide"):
            raise ValueError(f"on_context_full must be stop or slide, not {on_context_full!r}")
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.start_ids = list(start_ids or [])
        self.decoder = Decoder(model, absorb=absorb, slack=slack)
        self.on_context_full = on_context_full
        self.vocab_size = int(self.model.vocab_size)

    @property
    def context(self) -> int:
        """Ids a row may hold (prompt and output), virtual tokens excluded."""
        return self.decoder.max_len - self.decoder.n_virtual

    # ------------------------------------------------------------ prompts

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this generator has no tokenizer: give prompts as lists of ids")
        return self.start_ids + list(self.tokenizer.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return "" if self.tokenizer is None else str(self.tokenizer.decode(ids))

    def prompt_ids(self, prompt: str | list[int], on_long_prompt: str = "refuse") -> tuple[list[int], int]:
        """(ids, ids dropped) of a text or id prompt: ids checked against the vocabulary; a prompt leaving
        no room for one new token is refused (PromptTooLong) or keeps its last ids ("truncate")."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise PromptTooLong("the prompt is empty: give at least one token")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UnknownToken(f"token id {bad[0]} is not in the model's vocabulary (0..{self.vocab_size - 1})")
        room = self.context if self.on_context_full == "slide" else self.context - 1
        if len(ids) <= room:
            return ids, 0
        if on_long_prompt == "truncate":
            return ids[-room:], len(ids) - room
        raise PromptTooLong(f"the prompt has {len(ids)} tokens; the model's context holds {self.context} "
                            f"(max_seq_len{f' less {self.decoder.n_virtual} virtual tokens' if self.decoder.n_virtual else ''}), "
                            f"so at most {room} leave room to generate")

    # ------------------------------------------------------------ generation

    def stream(self, prompts: str | list[int] | list[str] | list[list[int]], params: SamplingParams | None = None, *,
               on_long_prompt: str = "refuse", **kwargs: Any) -> Iterator[Chunk]:
        """Chunks as tokens are produced, rows interleaved (Chunk.index: the prompt's place). `kwargs` build
        SamplingParams when `params` is None."""
        sequences = self.sequences(prompts, params or SamplingParams(**kwargs), on_long_prompt)
        yield from self.run(sequences)

    def generate(self, prompts: str | list[int] | list[str] | list[list[int]], params: SamplingParams | None = None, *,
                 on_long_prompt: str = "refuse", **kwargs: Any) -> Any:
        """Completion of one prompt (a text, or a list of ids), or a list of them for a list of prompts."""
        sequences = self.sequences(prompts, params or SamplingParams(**kwargs), on_long_prompt)
        for _ in self.run(sequences):
            pass
        completions = [s.completion() for s in sequences]
        return completions[0] if _single(prompts) else completions

    def sequences(self, prompts: Any, params: SamplingParams, on_long_prompt: str = "refuse") -> list[Sequence]:
        """One Sequence a prompt (checked and fitted as prompt_ids says)."""
        stop_ids = () if params.ignore_eos or self.eos_id is None else (self.eos_id,)
        out = []
        for index, prompt in enumerate([prompts] if _single(prompts) else prompts):
            ids, dropped = self.prompt_ids(prompt, on_long_prompt)
            sequence = Sequence(index, ids, params, tokenizer=self.tokenizer, stop_ids=stop_ids)
            sequence.truncated = dropped
            out.append(sequence)
        return out

    def run(self, sequences: list[Sequence]) -> Iterator[Chunk]:
        """Decodes the sequences as one batch until each finishes, yielding their chunks."""
        active = [s for s in sequences if s.params.max_new_tokens > 0]
        for s in sequences:
            if s.params.max_new_tokens == 0:
                s.finish_reason = "length"
        if not active:
            return
        cache = self.decoder.new_cache(len(active))
        logits = self.decoder.prefill(cache, [s.prompt_ids for s in active])
        while active:
            yield from choose_rows(active, logits)
            keep = [row for row, s in enumerate(active) if not s.finished]
            if not keep:
                return
            if len(keep) < len(active):
                cache, logits = cache.select(keep), logits[keep]
                active = [active[row] for row in keep]
            full = [row for row, length in enumerate(cache.lengths.tolist()) if length >= self.decoder.max_len]
            if full and self.on_context_full == "stop":
                for row in full:
                    yield active[row].end("context")
                keep = [row for row in range(len(active)) if row not in full]
                if not keep:
                    return
                cache, active = cache.select(keep), [active[row] for row in keep]
                full = []
            if full:  # slide: those rows recomputed from their last ids, the others one cached step
                cache, logits, active = self._slide(cache, active, full)
            else:
                logits = self.decoder.step(cache, [s.tokens[-1] for s in active])

    def _slide(self, cache: Cache, active: list[Sequence], full: list[int]) -> tuple[Cache, torch.Tensor, list[Sequence]]:
        rest = [row for row in range(len(active)) if row not in full]
        parts, logits, order = [], [], []
        if rest:
            kept = cache.select(rest)
            logits.append(self.decoder.step(kept, [active[row].tokens[-1] for row in rest]))
            parts.append(kept)
            order += rest
        for row in full:
            fresh = self.decoder.new_cache(1)
            logits.append(self.decoder.prefill(fresh, [active[row].ids[-self.context :]]))
            parts.append(fresh)
            order.append(row)
        return Cache.concat(parts), torch.cat(logits), [active[row] for row in order]


def choose_rows(sequences: list[Sequence], logits: torch.Tensor) -> list[Chunk]:
    """Each sequence's next token from its row of logits (B, vocab): the plain-greedy rows together (one
    argmax, one log_softmax and one transfer for the batch: the same tokens `Sequence.choose` picks), the
    others through their own Sampler."""
    plain = [row for row, s in enumerate(sequences) if s.plain_greedy]
    picked: dict[int, tuple[int, float]] = {}
    if plain:
        rows = logits if len(plain) == len(sequences) else logits[plain]
        rows = rows.float()
        tokens = rows.argmax(dim=-1)  # (P,)
        logprobs = torch.log_softmax(rows, dim=-1).gather(1, tokens[:, None])[:, 0]
        picked = dict(zip(plain, zip(tokens.tolist(), logprobs.tolist())))
    chunks = []
    for row, s in enumerate(sequences):
        if row in picked:
            token, logprob = picked[row]
            s.sampler.seen.append(token)
            chunks.append(s.accept(token, logprob))
        else:
            chunks.append(s.choose(logits[row]))
    return chunks


def _single(prompts: Any) -> bool:
    """A text, or one list of ids (not a list of prompts)."""
    return isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and bool(prompts) and isinstance(prompts[0], int))


def greedy_ids(model: nn.Module, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation of `prompt_ids` (new ids only), cached, never stopping early, sliding past
    the context as the old uncached sample did: what the training loop's evaluation sample shows."""
    generator = Generator(model, on_context_full="slide")
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    return list(generator.generate(list(prompt_ids), params, on_long_prompt="truncate").token_ids)
