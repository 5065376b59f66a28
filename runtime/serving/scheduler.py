"""The continuous-batching scheduler: one loop on its own thread runs every sequence the server holds.

Each turn of the loop:

    1. drops cancelled sequences (their clients left) and frees their cache blocks;
    2. decodes one token for every running sequence in one batched step (feeding each its last token),
       growing each one's blocks first; where the pool is out of blocks the newest sequence is preempted
       (blocks freed, back to the front of the queue, recomputed from its tokens later);
    3. admits waiting requests while the batch has room (max_batch), the pool has their blocks and the
       turn's prefill budget (prefill_tokens) lasts, prefills them in one padded pass and joins their cache
       rows to the running batch: a newcomer costs the running sequences one prefill pass, never a stall
       for the whole queue;
    (finished sequences leave after each pass, before admission: their rows are dropped from the cache and
    their blocks freed, so a newcomer takes their place in the same turn).

Every sequence samples with its own parameters through the inference core's Sampler (runtime/inference/
sampling.py: repetition penalty, temperature, top-k, top-p, min-p, seed; what `tabula generate` does) and
stops on its own tokens, strings and max_tokens. The
decoder is the inference core's (runtime/inference `Decoder`: new_cache, prefill, step; its `Cache` rows
are selected and concatenated as sequences leave and join). The cache is paged: the full-attention layers'
keys and values live in the blocks of the scheduler's pool (the Decoder's caches are made with it, each
row the pool's sequence of its request), so a row joining or leaving hands over its block table, copies no
key, and the blocks the pool counts are the cache's memory (sliding-window layers keep their rolling
buffers, bounded by the window; Mamba layers their per-row state). Errors in a step finish the sequences of
that step with finish_reason "error"; the loop goes on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..inference.decoder import Decoder
from ..inference.sampling import Sampler
from ..inference.sampling import SamplingParams as CoreParams
from .blocks import BlockPool, PoolExhausted
from .protocol import Event, FinishReason, GenerationRequest, Handle, QueueFull, ServingError, TooLong
from .text import TextStream


def sampler_for(params: Any, prompt: list[int]) -> Sampler:
    """The inference core's Sampler for a request's params (protocol.SamplingParams): the same processors
    (repetition penalty, temperature, top-k, top-p, min-p) and seeded generator as `tabula generate`.
    Stops are the scheduler's own (stop ids, TextStream). Raises ServingError on values it refuses."""
    try:
        core = CoreParams(max_new_tokens=params.max_tokens, temperature=params.temperature, top_k=params.top_k,
                          top_p=params.top_p, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                          seed=params.seed, ignore_eos=True)
    except ValueError as error:
        raise ServingError(str(error)) from None
    return Sampler(core, prompt)


def plain_greedy(params: Any) -> bool:
    """Greedy with nothing that changes the argmax (no repetition penalty): rows like this are sampled
    together, one argmax over the batch."""
    return bool(params.greedy and params.repetition_penalty == 1.0)


@dataclass
class _Sequence:
    """A request the scheduler holds: every token known so far (prompt, then sampled), the last of which is
    not yet in the cache once decoding runs."""

    id: int
    handle: Handle
    tokens: list[int]
    stream: TextStream
    sampler: Sampler  # the inference core's: this sequence's processors, seeded generator, tokens seen
    stop_ids: frozenset[int] = frozenset()
    generated: int = 0
    admitted_at: int = 0  # admission order: the newest is preempted first

    @property
    def params(self):
        return self.handle.request.params


@dataclass
class SchedulerConfig:
    """max_batch: sequences decoded together; max_queue: requests waiting beyond those (more: QueueFull);
    cache_tokens: the pool's size in tokens (None: max_batch full contexts); block_size: tokens a block;
    prefill_tokens: prompt tokens prefilled in one turn (at least one request is)."""

    max_batch: int = 16
    max_queue: int = 64
    cache_tokens: int | None = None
    block_size: int = 16
    prefill_tokens: int = 2048
    stop_token_ids: tuple[int, ...] = ()  # the model's end-of-text tokens, for every request


@dataclass
class _Counters:
    preempted: int = 0
    steps: int = 0
    prefills: int = 0
    errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Scheduler:
    """Runs `decoder` (runtime/inference Decoder) over every submitted request; `decode(ids) -> str` is the
    tokenizer's. Start with `start()`, stop with `close()`."""

    def __init__(self, decoder: Any, decode: Callable[[Sequence[int]], str], config: SchedulerConfig | None = None) -> None:
        self.decoder = decoder
        self.decode = decode
        self.config = config or SchedulerConfig()
        self.virtual = int(getattr(decoder, "n_virtual", 0))  # cache tokens a row holds before its ids
        self.max_len = int(decoder.max_len) - self.virtual  # ids a row holds
        self.paged = isinstance(decoder, Decoder)  # the inference core's: its caches live in the pool's blocks
        tokens = self.config.cache_tokens or self.config.max_batch * self.max_len
        self.pool = BlockPool(max(1, tokens // self.config.block_size), self.config.block_size)
        self.waiting: deque[_Sequence] = deque()
        self.running: list[_Sequence] = []
        self.cache: Any = None  # the running batch's Cache, one row per running sequence, in order
        self.counters = _Counters()
        self._ids = itertools.count()
        self._admissions = itertools.count()
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the app's side

    def submit(self, request: GenerationRequest, on_event: Callable[[Event], None]) -> Handle:
        prompt = list(request.prompt_ids)
        params = request.params
        if not prompt:
            raise TooLong("the prompt is empty: give at least one token")
        if len(prompt) >= self.max_len:
            raise TooLong(f"the prompt has {len(prompt)} tokens; the model's context is {self.max_len}, so at most "
                          f"{self.max_len - 1} leave room for one new token")
        longest = min(len(prompt) + params.max_tokens, self.max_len)
        if self.pool.blocks_for(longest + self.virtual) > self.pool.n_blocks:
            raise TooLong(f"the prompt and max_tokens need {self.pool.blocks_for(longest + self.virtual)} cache blocks of {self.pool.block_size} "
                          f"tokens; the cache pool has {self.pool.n_blocks}: lower max_tokens or the prompt")
        handle = Handle(request, on_event, prompt_tokens=len(prompt), submitted_at=time.monotonic())
        stop_ids = set(params.stop_token_ids) | set(self.config.stop_token_ids)
        sampler = sampler_for(params, prompt)
        seq = _Sequence(next(self._ids), handle, prompt, TextStream(self.decode, params.stop), sampler, frozenset(stop_ids))
        with self._wake:
            if len(self.waiting) >= self.config.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests already wait (--max-queue {self.config.max_queue}): try again later")
            self.waiting.append(seq)
            self._wake.notify()
        return handle

    def stats(self) -> dict[str, float]:
        return {"queue_length": len(self.waiting), "running": len(self.running), "cache_blocks_used": self.pool.used,
                "cache_blocks_total": self.pool.n_blocks, "cache_pool_bytes": self.pool.nbytes(), "preempted_total": self.counters.preempted,
                "decode_steps_total": self.counters.steps}

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="tabula-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self.waiting and not self.running:
                    self._wake.wait(0.5)
                if self._closing:
                    break
            self.turn()
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, "cancelled")

    def turn(self) -> None:
        """One turn: drop the cancelled, decode the running one token, admit and prefill newcomers, let the finished leave."""
        self._drop_cancelled()
        if self.running:
            finished = self._decode()
            if finished:  # before admission: their slots and blocks go to the newcomers of this turn
                self._leave(finished)
        admitted = self._admit()
        if admitted:
            finished = self._prefill(admitted)
            if finished:
                self._leave(finished)

    def _drop_cancelled(self) -> None:
        with self._wake:
            gone = [seq for seq in self.waiting if seq.handle.cancelled]
            for seq in gone:
                self.waiting.remove(seq)
        for seq in gone:
            self._finish(seq, "cancelled")
        cancelled = {seq.id for seq in self.running if seq.handle.cancelled}
        if cancelled:
            self._leave(cancelled, reason="cancelled")

    def _decode(self) -> set[int]:
        for seq in list(self.running):  # oldest first: the newest is preempted when blocks run out
            if seq in self.running:
                self._reserve(seq, len(seq.tokens))
        if not self.running:
            return set()
        try:
            logits = self.decoder.step(self.cache, [seq.tokens[-1] for seq in self.running])  # (B, vocab)
        except Exception as error:  # a failed step must not take the server down: its sequences end in error
            return self._fail(self.running, error)
        self.counters.steps += 1
        return self._sample(self.running, logits)

    def _reserve(self, seq: _Sequence, tokens: int) -> None:
        """Blocks for `tokens` cache tokens of `seq`, preempting the newest sequences while the pool is short."""
        while True:
            try:
                self.pool.grow(seq.id, tokens + self.virtual)
                return
            except PoolExhausted:
                victim = max(self.running, key=lambda s: s.admitted_at)
                self._preempt(victim)
                if victim is seq:
                    return

    def _preempt(self, seq: _Sequence) -> None:
        row = self.running.index(seq)
        keep = [i for i in range(len(self.running)) if i != row]
        self.running.pop(row)
        self.cache = self.cache.select(keep) if keep else None
        self.pool.release(seq.id)
        self.counters.preempted += 1
        with self._wake:
            self.waiting.appendleft(seq)  # first in line again; its tokens so far are recomputed on admission

    def _admit(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        budget = self.config.prefill_tokens
        with self._wake:
            while self.waiting and len(self.running) + len(admitted) < self.config.max_batch:
                seq = self.waiting[0]
                size = len(seq.tokens)
                if admitted and size > budget:
                    break
                # its prompt, and a block to spare for the running ones to grow into (none when it runs alone)
                if not self.pool.can_hold(size + self.virtual, spare=1 if self.running or admitted else 0):
                    break
                self.waiting.popleft()
                self.pool.grow(seq.id, size + self.virtual)
                seq.admitted_at = next(self._admissions)
                admitted.append(seq)
                budget -= size
        return admitted

    def _prefill(self, admitted: list[_Sequence]) -> set[int]:
        try:
            if self.paged:
                cache = self.decoder.new_cache(len(admitted), pool=self.pool, seqs=[seq.id for seq in admitted])
            else:  # another decoder (a test's reference): the pool only counts its blocks
                cache = self.decoder.new_cache(len(admitted))
            logits = self.decoder.prefill(cache, [seq.tokens for seq in admitted])  # (B, vocab)
        except Exception as error:
            for seq in admitted:
                self.pool.release(seq.id)
            self._fail(admitted, error)
            return set()
        self.counters.prefills += 1
        self.cache = cache if self.cache is None else type(cache).concat([self.cache, cache])
        self.running.extend(admitted)
        return self._sample(admitted, logits)

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> set[int]:
        """Each row's next token (plain greedy rows by one argmax over the batch, the others by their own
        Sampler); returns the ids of the sequences that finished."""
        plain = [plain_greedy(seq.params) for seq in seqs]
        greedy = logits.argmax(dim=-1).tolist() if any(plain) else []
        finished = set()
        now = time.monotonic()
        for row, seq in enumerate(seqs):
            params = seq.params
            if plain[row]:
                token = greedy[row]
                seq.sampler.seen.append(token)
            else:
                token = seq.sampler.sample(logits[row])[0]
            if seq.handle.first_token_at is None:
                seq.handle.first_token_at = now
            if token in seq.stop_ids:
                finished.add(seq.id)
                self._finish(seq, "stop")
                continue
            seq.tokens.append(token)
            seq.generated += 1
            seq.handle.completion_tokens = seq.generated
            text, stopped = seq.stream.push(token)
            self._emit(seq, Event(token_id=token, text=text))
            if stopped:
                finished.add(seq.id)
                self._finish(seq, "stop")
            elif seq.generated >= params.max_tokens or len(seq.tokens) >= self.max_len:
                finished.add(seq.id)
                self._finish(seq, "length")
        return finished

    def _leave(self, ids: set[int], reason: FinishReason | None = None) -> None:
        keep = [i for i, seq in enumerate(self.running) if seq.id not in ids]
        leaving = [seq for seq in self.running if seq.id in ids]
        self.running = [self.running[i] for i in keep]
        self.cache = self.cache.select(keep) if keep and self.cache is not None else None
        for seq in leaving:
            self.pool.release(seq.id)
            if reason is not None:
                self._finish(seq, reason)

    def _fail(self, seqs: list[_Sequence], error: Exception) -> set[int]:
        self.counters.errors += 1
        message = f"{type(error).__name__}: {error}"
        for seq in seqs:
            self._finish(seq, "error", message)
        return {seq.id for seq in seqs}

    def _finish(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        text = seq.stream.flush() if reason in ("length", "stop") else ""
        self._emit(seq, Event(text=text, finish_reason=reason, error=error))

    @staticmethod
    def _emit(seq: _Sequence, event: Event) -> None:
        try:
            seq.handle.on_event(event)
        except Exception:  # a client's callback failing is the client's end, not the server's
            seq.handle.cancel()
