"""Human quantities in specs: token counts (`64k`, `10M`, `2.5B`) and fractions (`2%`, `0.02`).

Suffixes are binary, as in "a 64k context": k = 2**10, M = 2**20, B = 2**30, T = 2**40,
so `64k` and `65536` are the same value and hash the same.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from .limits import MAX_TOKENS

_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "b": 2**30, "g": 2**30, "t": 2**40}
_TOKENS = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?|[0-9]*\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([kKmMbBgGtT]?)\s*$")
TOKEN_PATTERN = r"^\s*[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?\s*[kKmMbBgGtT]?\s*$"


def parse_token_count(value: Any) -> Any:
    """`65536`, `"64k"`, `"10M"`, `"2.5B"`, `1e6` -> a whole number of tokens.

    Anything that is not a count is passed on unchanged so that pydantic reports it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"a whole number of tokens, found {value!r}")
    if isinstance(value, str):
        match = _TOKENS.match(value)
        if not match:
            raise ValueError(f"a token count such as 65536, 64k, 10M or 2.5B, found {value!r}")
        number, exponent, suffix = match.groups()
        # one float parse: `10 ** exponent` as an int would take minutes for `1e999999999k`
        scaled = float(f"{number}e{exponent or 0}") * _SUFFIX[suffix.lower()]
        if not math.isfinite(scaled):
            raise ValueError(f"a token count such as 65536, 64k, 10M or 2.5B, found {value!r} (far too large)")
        if not scaled.is_integer():
            raise ValueError(f"{value!r} is not a whole number of tokens ({scaled:g})")
        return int(scaled)
    return value


def parse_fraction(value: Any) -> Any:
    """`"2%"` or `0.02` -> 0.02. Anything else is passed on for pydantic to report."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                return float(text[:-1]) / 100.0
            return float(text)
        except ValueError:
            raise ValueError(f"a fraction such as 0.02 or 2%, found {value!r}") from None
    return value


TokenCount = Annotated[
    int,
    BeforeValidator(parse_token_count),
    Field(ge=0, le=MAX_TOKENS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS},
                {"type": "string", "pattern": TOKEN_PATTERN},
            ],
            "description": "A token count: 65536, 64k, 10M, 2.5B (k = 1024), at most 2**53.",
        }
    ),
]
PositiveTokenCount = Annotated[TokenCount, Field(gt=0)]

Fraction = Annotated[
    float,
    BeforeValidator(parse_fraction),
    Field(ge=0.0, le=1.0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*%\s*$"},
            ],
            "description": "A fraction: 0.02 or 2%.",
        }
    ),
]
