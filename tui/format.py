"""Numbers as the dashboard shows them: 1.5M tokens, 3.2 GiB, 1h02m, in the shared styles of
`tabula.schemas.units` (three significant digits; the spec's binary suffixes for tokens).

Events come from files any tool may write: an amount that cannot be one (infinite, NaN, or
negative where only >= 0 makes sense) reads '-' like an unknown one, never 'infT' or '-3 B'.
Losses and gradient norms (`format_float`) keep 'inf' and 'nan': there they are news.
"""

from __future__ import annotations

import math

from tabula.schemas import units
from tabula.schemas.units import UNKNOWN

__all__ = ["UNKNOWN", "format_bytes", "format_count", "format_duration", "format_float", "format_percent",
           "format_rate", "format_seconds", "format_tokens"]

CLOCK_LIMIT_S = 1e9  # over 30 years: a clock gone wrong, not a run


def _amount(value: float | None) -> float | None:
    """`value` when it is a finite number >= 0, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def format_count(value: float | None) -> str:
    """Decimal suffixes for counts and rates: 1536 -> '1.54k', 3_145_728 -> '3.15M'."""
    return units.format_count(_amount(value))


def format_tokens(value: int | None) -> str:
    """Token counts with the spec's binary suffixes (k = 1024, M = 2**20): 3_145_728 -> '3M', 16384 -> '16k'."""
    return units.format_count(_amount(value), binary=True)


def format_bytes(value: int | None) -> str:
    """Binary units: 3_435_973_837 -> '3.2 GiB'."""
    return units.format_bytes(value)


def format_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 65 -> '1m05s', 7.2 -> '7s', None -> '-'."""
    seconds = _amount(seconds)
    return UNKNOWN if seconds is None or seconds >= CLOCK_LIMIT_S else units.format_duration(seconds)


def format_float(value: float | None, digits: int = 4) -> str:
    """A metric with `digits` significant digits, or '-' when unknown."""
    if value is None:
        return UNKNOWN
    return f"{value:.{digits}g}"


def format_percent(value: float | None) -> str:
    """0.425 -> '42.5%'."""
    value = _amount(value)
    return UNKNOWN if value is None else f"{100 * value:.1f}%"


def format_rate(value: float | None) -> str:
    """A learning rate: 3e-4 -> '3.000e-04'."""
    value = _amount(value)
    return UNKNOWN if value is None else f"{value:.3e}"


def format_seconds(value: float | None) -> str:
    """A step time: 0.1234 -> '0.123 s'."""
    value = _amount(value)
    return UNKNOWN if value is None else f"{value:.3f} s"
