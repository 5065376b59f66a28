"""The server's metrics in Prometheus' text format (version 0.0.4), kept by the app as requests come and go.

    tabula_requests_total{endpoint,status}       counter    requests answered, by HTTP status
    tabula_generated_tokens_total                counter    completion tokens sent
    tabula_prompt_tokens_total                   counter    prompt tokens prefilled
    tabula_queue_length, tabula_running_batch    gauges     from the scheduler (stats())
    tabula_cache_blocks_used / _total            gauges     the cache pool
    tabula_cache_pool_bytes                      gauge      the paged cache's memory (allocated once)
    tabula_tokens_per_second                     gauge      completion tokens over the last 10 s
    tabula_time_to_first_token_seconds           histogram
    tabula_request_latency_seconds               histogram  submission to the last token
Torch-free.
"""

from __future__ import annotations

import threading
import time
from collections import deque

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW = 10.0  # seconds tokens/s is measured over


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        return [*out, f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """Thread-safe counters and histograms; `render(stats)` writes them with the scheduler's gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.generated = 0
        self.prompt = 0
        self.ttft = Histogram()
        self.latency = Histogram()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) within RATE_WINDOW

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated += n
            self._recent.append((now, n))

    def finished(self, prompt_tokens: int, ttft: float | None, latency: float) -> None:
        with self._lock:
            self.prompt += prompt_tokens
            if ttft is not None:
                self.ttft.observe(ttft)
            self.latency.observe(latency)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW

    def render(self, stats: dict[str, float]) -> str:
        rate = self.tokens_per_second()
        with self._lock:
            lines = ["# HELP tabula_requests_total Requests answered, by endpoint and HTTP status.", "# TYPE tabula_requests_total counter"]
            lines += [f'tabula_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}'
                      for (endpoint, status), count in sorted(self.requests.items())]
            lines += ["# HELP tabula_generated_tokens_total Completion tokens generated.", "# TYPE tabula_generated_tokens_total counter",
                      f"tabula_generated_tokens_total {self.generated}",
                      "# HELP tabula_prompt_tokens_total Prompt tokens of finished requests.", "# TYPE tabula_prompt_tokens_total counter",
                      f"tabula_prompt_tokens_total {self.prompt}"]
            gauges = {"queue_length": ("Requests waiting for a batch slot.", stats.get("queue_length", 0)),
                      "running_batch": ("Sequences in the running batch.", stats.get("running", 0)),
                      "cache_blocks_used": ("Cache pool blocks held by sequences.", stats.get("cache_blocks_used", 0)),
                      "cache_blocks_total": ("Cache pool blocks in all.", stats.get("cache_blocks_total", 0)),
                      "cache_pool_bytes": ("Bytes of the cache pool's key/value tensors.", stats.get("cache_pool_bytes", 0)),
                      "preempted_total": ("Sequences preempted when the pool ran out of blocks.", stats.get("preempted_total", 0)),
                      "tokens_per_second": (f"Completion tokens a second over the last {RATE_WINDOW:g} s.", rate)}
            for name, (help_text, value) in gauges.items():
                kind = "counter" if name.endswith("_total") and name != "cache_blocks_total" else "gauge"
                lines += [f"# HELP tabula_{name} {help_text}", f"# TYPE tabula_{name} {kind}", f"tabula_{name} {value:g}"]
            for name, histogram, help_text in (("time_to_first_token_seconds", self.ttft, "Time from submission to the first token."),
                                               ("request_latency_seconds", self.latency, "Time from submission to the last token.")):
                lines += [f"# HELP tabula_{name} {help_text}", f"# TYPE tabula_{name} histogram", *histogram.lines(f"tabula_{name}")]
        return "\n".join(lines) + "\n"
