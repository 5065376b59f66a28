"""A sequence's text as its tokens arrive: decoded incrementally, never splitting a multi-byte character,
and cut at the first stop string (which is itself never sent, nor any part of it ahead of time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decoder writes for the first bytes of a character still incomplete


class TextStream:
    """Feed token ids one at a time; each `push` returns (new text to send, stopped)."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        self.text = text
        if self.stop:
            start = max(0, self.sent - max(len(s) for s in self.stop))
            found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if found:
                cut = min(found)
                out, self.sent = text[self.sent:cut], cut
                self.text = text[:cut]
                return out, True
        end = len(text)
        while end > self.sent and text[end - 1] == REPLACEMENT:
            end -= 1  # an incomplete character: wait for its other bytes
        end -= self._held(text[:end])
        if end <= self.sent:
            return "", False
        out, self.sent = text[self.sent:end], end
        return out, False

    def _held(self, text: str) -> int:
        """Characters at the end of `text` that could begin a stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """What is left unsent at the end (held-back characters that turned out not to start a stop string)."""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
