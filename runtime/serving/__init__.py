"""Serving: the continuous-batching scheduler and the OpenAI-compatible app over the inference core.

    protocol.py   requests, sampling parameters, events, errors; the Engine protocol the app uses
    blocks.py     the cache pool: blocks of tokens handed to sequences, with a limit (the paged cache's memory)
    scheduler.py  one loop: newcomers join the running batch at every step, finished sequences leave
    text.py       incremental decoding and stop strings
    requests.py   the OpenAI request bodies, validated
    app.py        the FastAPI app (imports fastapi: import it by its module, not from here)
    metrics.py    Prometheus text
"""

from .blocks import BlockPool
from .protocol import Engine, Event, GenerationRequest, Handle, QueueFull, SamplingParams, ServingError, TooLong

__all__ = ["BlockPool", "Engine", "Event", "GenerationRequest", "Handle", "QueueFull", "SamplingParams", "ServingError", "TooLong"]
