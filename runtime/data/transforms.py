"""data.transforms: augmentations of the training documents (fill-in-the-middle, span corruption,
noise), one registry entry each.

Each transform works on a document's text before tokenization, with a random generator seeded by
(spec seed, source, document's index among the source's training documents, transform's index),
so the same spec and data give the same augmented corpus on every machine. A transform leaves a
document unchanged where it does not apply (too short, or already holding one of its tokens).
"""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence

import numpy as np

from ...schemas.registry import Registry

EXAMPLE_CHARS = 240  # of a document before and after, in the report


class TransformKind(Protocol):
    def tokens(self, spec: Any) -> list[str]:
        """The special tokens the transform writes (added to the tokenizer)."""

    def apply(self, spec: Any, text: str, rng: np.random.Generator) -> str | None:
        """The transformed text, or None where the document stays as it is."""


TRANSFORMS: Registry[TransformKind] = Registry("transform")


# ---------------------------------------------------------------- fill-in-the-middle


@TRANSFORMS.register("fim")
class Fim:
    """PSM: <pre>prefix<suf>suffix<mid>middle; SPM: <pre><suf>suffix<mid>prefix middle. Cut at
    two characters drawn uniformly."""

    @staticmethod
    def tokens(spec: Any) -> list[str]:
        return [spec.prefix_token, spec.suffix_token, spec.middle_token]

    @staticmethod
    def apply(spec: Any, text: str, rng: np.random.Generator) -> str | None:
        if not text or any(token in text for token in Fim.tokens(spec)):
            return None
        first, second = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        prefix, middle, suffix = text[:first], text[first:second], text[second:]
        pre, suf, mid = spec.prefix_token, spec.suffix_token, spec.middle_token
        if rng.random() < spec.spm_rate:
            return f"{pre}{suf}{suffix}{mid}{prefix}{middle}"
        return f"{pre}{prefix}{suf}{suffix}{mid}{middle}"


def fim_pieces(spec: Any, text: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of a FIM document as `Fim.apply` wrote it; in SPM form the prefix
    and middle are one piece, returned as the middle. prefix + middle + suffix is the document."""
    pre, suf, mid = spec.prefix_token, spec.suffix_token, spec.middle_token
    if not text.startswith(pre):
        raise ValueError("not a fill-in-the-middle document: it does not start with the prefix token")
    body = text[len(pre):]
    if body.startswith(suf):  # SPM
        suffix, _, rest = body[len(suf):].partition(mid)
        return "", rest, suffix
    prefix, _, rest = body.partition(suf)
    suffix, _, middle = rest.partition(mid)
    return prefix, middle, suffix


# ---------------------------------------------------------------- span corruption


@TRANSFORMS.register("span_corruption")
class SpanCorruption:
    """Words (with their trailing whitespace) in spans replaced by <|span_i|>; after the separator,
    each sentinel followed by the words it stands for."""

    @staticmethod
    def tokens(spec: Any) -> list[str]:
        return [spec.separator_token] + [_sentinel(i) for i in range(spec.max_spans)]

    @staticmethod
    def apply(spec: Any, text: str, rng: np.random.Generator) -> str | None:
        words = re.findall(r"\S+\s*", text)  # each word with the whitespace after it
        if words:
            words[0] = text[: len(text) - len(text.lstrip())] + words[0]  # "".join(words) is the text
        if len(words) < 2 or any(token in text for token in SpanCorruption.tokens(spec)):
            return None
        noise = min(len(words) - 1, max(1, round(len(words) * spec.noise_density)))
        spans = max(1, min(spec.max_spans, noise, round(noise / spec.mean_span_words)))
        span_lengths = _composition(noise, spans, rng, smallest=1)
        keep_lengths = _composition(len(words) - noise, spans + 1, rng, smallest=0)
        corrupted, targets, at = [], [spec.separator_token], 0
        for i in range(spans):
            corrupted.extend(words[at : at + keep_lengths[i]])
            at += keep_lengths[i]
            corrupted.append(_sentinel(i))
            targets.append(_sentinel(i) + "".join(words[at : at + span_lengths[i]]))
            at += span_lengths[i]
        corrupted.extend(words[at:])
        return "".join(corrupted) + "".join(targets)


def _sentinel(index: int) -> str:
    return f"<|span_{index}|>"


def _composition(total: int, parts: int, rng: np.random.Generator, smallest: int) -> list[int]:
    """`total` split into `parts` whole numbers, each at least `smallest`, uniformly at random."""
    free = total - parts * smallest
    cuts = np.sort(rng.integers(0, free + 1, size=parts - 1)) if parts > 1 else np.zeros(0, dtype=np.int64)
    edges = np.concatenate([[0], cuts, [free]])
    return [int(x) + smallest for x in np.diff(edges)]


# ---------------------------------------------------------------- noise


@TRANSFORMS.register("noise")
class Noise:
    """Word dropout and replacement, whitespace doubled or removed, case flipped, each at its rate."""

    @staticmethod
    def tokens(spec: Any) -> list[str]:
        return []

    @staticmethod
    def apply(spec: Any, text: str, rng: np.random.Generator) -> str | None:
        pieces = re.findall(r"\S+|\s+", text)
        words = [piece for piece in pieces if not piece[0].isspace()]
        if not words:
            return None
        out = []
        draws = rng.random((len(pieces), 4))
        for piece, (drop, replace, flip, space) in zip(pieces, draws):
            if piece[0].isspace():
                if space < spec.whitespace:
                    piece = piece + " " if rng.random() < 0.5 else ""
            else:
                if drop < spec.word_dropout:
                    continue
                if replace < spec.word_replacement:
                    piece = words[int(rng.integers(len(words)))]
                if flip < spec.case:
                    piece = piece.swapcase()
            out.append(piece)
        return "".join(out)


# ---------------------------------------------------------------- applying a spec's transforms


class Augmenter:
    """A spec's transforms over the training documents of its sources, with what the report shows:
    per transform, the documents changed and the first example before and after."""

    def __init__(self, transforms: Sequence[Any], seed: int, sources: Sequence[str]):
        self.transforms, self.seed, self.sources = list(transforms), seed, list(sources)
        self.changed = [0] * len(self.transforms)
        self.examples: list[dict[str, str] | None] = [None] * len(self.transforms)

    @property
    def tokens(self) -> list[str]:
        """The special tokens every transform writes, in order, each once."""
        seen: dict[str, None] = {}
        for transform in self.transforms:
            seen.update(dict.fromkeys(TRANSFORMS[transform.kind].tokens(transform)))
        return list(seen)

    def apply(self, source: str, index: int, text: str) -> str:
        """Training document `index` of `source` after every transform that draws it."""
        for position, transform in enumerate(self.transforms):
            if transform.sources is not None and source not in transform.sources:
                continue
            rng = np.random.default_rng([self.seed, self.sources.index(source), index, position])
            if rng.random() >= transform.rate:
                continue
            after = TRANSFORMS[transform.kind].apply(transform, text, rng)
            if after is None:
                continue
            if self.examples[position] is None:
                self.examples[position] = {"source": source, "before": text[:EXAMPLE_CHARS], "after": after[:EXAMPLE_CHARS]}
            self.changed[position] += 1
            text = after
        return text

    def report(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "kind": t.kind, "documents": self.changed[i], "tokens": TRANSFORMS[t.kind].tokens(t), "example": self.examples[i]}
            for i, t in enumerate(self.transforms)
        ]
