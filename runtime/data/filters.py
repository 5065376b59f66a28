"""Document filters: a registry maps each filter `kind` to a function that builds a predicate.

A predicate takes a document's text and says whether to keep it. Dedup predicates remember
what they have seen: one instance runs over all sources in spec order, so a document kept in
one source's validation split can never reappear in another source's training split.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from tabula.schemas.data import DedupFilter, LengthFilter, QualityFilter, RegexFilter
from tabula.schemas.registry import Registry

from .minhash import MinHashIndex

Keep = Callable[[str], bool]
FILTERS: Registry[Callable[[Any], Keep]] = Registry("filter")  # kind -> (filter spec) -> predicate


@FILTERS.register("length")
def length(spec: LengthFilter) -> Keep:
    low, high = spec.min_chars, spec.max_chars
    return lambda text: len(text) >= low and (high is None or len(text) <= high)


@FILTERS.register("dedup")
def dedup(spec: DedupFilter) -> Keep:
    if spec.method == "minhash":
        index = MinHashIndex(spec.threshold, spec.num_perm)
        return lambda text: not index.seen_similar(text)
    seen: set[int] = set()  # 64-bit digests as ints: about 60 bytes a document

    def keep(text: str) -> bool:
        digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if digest in seen:
            return False
        seen.add(digest)
        return True

    return keep


@FILTERS.register("regex")
def regex(spec: RegexFilter) -> Keep:
    pattern = re.compile(spec.pattern)
    wanted = spec.action == "keep"
    return lambda text: (pattern.search(text) is not None) == wanted


@FILTERS.register("quality")
def quality(spec: QualityFilter) -> Keep:
    def keep(text: str) -> bool:
        visible = [c for c in text if not c.isspace()]
        if not visible or sum(c.isalpha() for c in visible) / len(visible) < spec.min_alpha_fraction:
            return False
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            repeats = sum(count - 1 for count in Counter(lines).values())
            if repeats / len(lines) > spec.max_repeated_line_fraction:
                return False
        words = text.split()
        mean = sum(map(len, words)) / len(words)
        return spec.min_mean_word_length <= mean <= spec.max_mean_word_length

    return keep


@dataclass
class FilterChain:
    """The spec's filters in order, with documents in and out counted per source and filter."""

    specs: list[Any]
    predicates: list[Keep] = field(init=False)
    counts: dict[str, list[list[int]]] = field(default_factory=dict)  # source -> [[in, out] per filter]

    def __post_init__(self):
        self.predicates = [FILTERS[spec.kind](spec) for spec in self.specs]

    def keep(self, source: str, text: str) -> bool:
        counts = self.counts.setdefault(source, [[0, 0] for _ in self.specs])
        for predicate, count in zip(self.predicates, counts):
            count[0] += 1
            if not predicate(text):
                return False
            count[1] += 1
        return True

    def report(self, source: str) -> list[dict[str, Any]]:
        counts = self.counts.get(source, [[0, 0] for _ in self.specs])
        return [{"index": i, "kind": spec.kind, "in": c[0], "out": c[1]} for i, (spec, c) in enumerate(zip(self.specs, counts))]

    def emptied_by(self, source: str) -> int | None:
        """The index of the filter that left `source` with no documents, if one did."""
        for index, (count_in, count_out) in enumerate(self.counts.get(source, [])):
            if count_in and not count_out:
                return index
        return None
