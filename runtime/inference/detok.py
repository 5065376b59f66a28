"""Streaming text: incremental detokenization that never splits a multi-byte character, and stop strings.

`IncrementalDecoder(tokenizer, context_ids)` turns ids one at a time into text pieces: it decodes a
short window of ids and holds the text back while it ends in U+FFFD (a character whose bytes have not
all arrived), so each piece is whole characters. `context_ids` (the prompt's last ids) give decoders
that depend on the previous token (sentencepiece's leading space) their context.

`StopText(stops)` watches the output text for stop strings: `feed(piece) -> (text to emit, stopped)`
emits nothing that could still turn out to begin a stop string, and nothing from a stop string on.
"""

from __future__ import annotations

from typing import Any

CONTEXT = 5  # prompt ids kept as the decoding context


class IncrementalDecoder:
    """Text pieces of a growing id sequence (the TGI/vLLM prefix/read offsets)."""

    def __init__(self, tokenizer: Any, context_ids: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list((context_ids or [])[-CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids)) if ids else ""

    def push(self, token: int) -> str:
        """The text `token` completes ("" while a character is unfinished)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """What is left undecoded at the end (an unfinished character comes out as U+FFFD)."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(before) :] if text.startswith(before) else ""


class StopText:
    """The output text with stop strings cut: emits text only once no stop string can begin in it."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""  # everything decoded so far
        self.emitted = 0  # characters of `text` given out
        self.matched: str | None = None

    def feed(self, piece: str, *, final: bool = False) -> tuple[str, bool]:
        """(new text to emit, whether a stop string was met). `final`: the output ends, nothing is held."""
        if self.matched is not None:
            return "", True
        self.text += piece
        if self.stops:
            start = max(0, self.emitted - max(len(s) for s in self.stops) + 1)
            hits = [(self.text.find(s, start), s) for s in self.stops]
            hits = [(at, s) for at, s in hits if at >= 0]
            if hits:
                at, self.matched = min(hits)
                out = self.text[self.emitted : at]
                self.emitted = at
                return out, True
        end = len(self.text) if final else len(self.text) - self._held()
        out = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out, False

    def _held(self) -> int:
        """Characters at the end of the text that begin some stop string (held back)."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    @property
    def output(self) -> str:
        """The output text: up to the stop string when one was met."""
        return self.text[: self.emitted] if self.matched is not None else self.text
