"""A bounded load test: N concurrent clients streaming a fixed list of completion requests to a server, each
client taking the next request when its last one ends; it stops when the list is done. Reports output
tokens a second, time to first token and latency (p50, p99) and failed requests. bench/bench_serving.py
runs it at several concurrencies against serving the same list one request at a time."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoadRequest:
    """A completion request: prompt token ids, and exactly max_tokens new tokens (the server must not stop early)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int


@dataclass
class LoadReport:
    concurrency: int
    requests: int
    seconds: float
    output_tokens: int
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": self.requests, "tok/s": self.tokens_per_second,
                "ttft_p50": percentile(self.ttft, 50), "ttft_p99": percentile(self.ttft, 99),
                "latency_p50": percentile(self.latency, 50), "latency_p99": percentile(self.latency, 99), "errors": len(self.errors)}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def mix(n: int, prompt_lengths: tuple[int, ...], output_lengths: tuple[int, ...], vocab: int, seed: int = 0) -> list[LoadRequest]:
    """n requests cycling through every (prompt length, output length) pair, prompts of random ids below vocab."""
    import random

    rng = random.Random(seed)
    pairs = [(p, o) for p in prompt_lengths for o in output_lengths]
    return [LoadRequest(tuple(rng.randrange(vocab) for _ in range(pairs[i % len(pairs)][0])), pairs[i % len(pairs)][1]) for i in range(n)]


async def _one(client: Any, url: str, model: str, request: LoadRequest, headers: dict[str, str], report: LoadReport) -> None:
    body = {"model": model, "prompt": list(request.prompt_ids), "max_tokens": request.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                report.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    report.errors.append(str(chunk["error"].get("message")))
                    return
                if first is None and chunk.get("choices"):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as error:  # a failed request is counted, never fatal to the test
        report.errors.append(f"{type(error).__name__}: {error}")
        return
    end = time.perf_counter()
    report.output_tokens += tokens
    report.ttft.append((first or end) - started)
    report.latency.append(end - started)


async def _run(url: str, model: str, requests: list[LoadRequest], concurrency: int, api_key: str | None, timeout: float) -> LoadReport:
    import httpx

    report = LoadReport(concurrency, len(requests), 0.0, 0)
    queue: asyncio.Queue[LoadRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                await _one(client, url, model, queue.get_nowait(), headers, report)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
    return report


def run_load(url: str, model: str, requests: list[LoadRequest], concurrency: int, *, api_key: str | None = None,
             timeout: float = 300.0) -> LoadReport:
    """Sends `requests` with `concurrency` clients (streaming, greedy) to the server at `url`; returns the report."""
    return asyncio.run(_run(url, model, requests, concurrency, api_key, timeout))
