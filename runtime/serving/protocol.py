"""What the HTTP app and the scheduler say to each other: a request's sampling parameters, the events
a sequence emits, the errors a submission can meet, and the `Engine` protocol the app is written against.

The app (app.py) never touches torch: it turns JSON into a `GenerationRequest`, submits it to an Engine
(scheduler.py's `Scheduler`, or any object that answers the protocol: a test's fake) and relays the
`Event`s of the returned `Handle` as JSON or server-sent events. Torch-free.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tabula.runtime.errors import TabulaError

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """One sequence's sampling, as the inference core's SamplingParams (runtime/inference/sampling.py) reads
    it: temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 keep every token; repetition_penalty > 1 makes
    the prompt's and the output's tokens less likely (1: off). `seed` makes a sampled sequence
    reproducible (None: torch's default generator)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt as token ids and how to continue it."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class Event:
    """What a sequence emits: a token (`token_id`, and `text`, the new characters it completes: '' while a
    multi-byte character or a possible stop string is held back), or the end (`finish_reason`, with the
    last held-back `text`). `error`: the message when finish_reason is "error"."""

    token_id: int | None = None
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Handle:
    """A submitted request: events arrive through `on_event` (called on the scheduler's thread); `cancel()`
    asks the scheduler to drop the sequence and free its cache at its next step."""

    request: GenerationRequest
    on_event: Callable[[Event], None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted_at: float = 0.0
    first_token_at: float | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class ServingError(TabulaError):
    """A request the engine will not take (the app answers with `status`)."""

    status = 400
    code = "invalid_request"


class QueueFull(ServingError):
    """max_queue requests already wait: try again later (HTTP 429)."""

    status = 429
    code = "queue_full"


class TooLong(ServingError):
    """A prompt (with its max_tokens) longer than the model's context or the cache pool (HTTP 400)."""

    code = "context_length_exceeded"


class Engine(Protocol):
    """What the app needs of a scheduler."""

    def submit(self, request: GenerationRequest, on_event: Callable[[Event], None]) -> Handle:
        """Queues the request; raises QueueFull, TooLong. Events follow through on_event, the last with a finish_reason."""
        ...

    def stats(self) -> dict[str, float]:
        """Gauges for /metrics and /health: queue_length, running, cache_blocks_used, cache_blocks_total."""
        ...
