"""Numbers as people read them on a dashboard: 1.5M tokens, 3.2 GiB, 1h02m.

Events come from files any tool may write: an amount that cannot be one (infinite, NaN, or
negative where only >= 0 makes sense) reads '-' like an unknown one, never 'infT' or '-3 B'.
Losses and gradient norms (`format_float`) keep 'inf' and 'nan': there they are news.
"""

from __future__ import annotations

import math

UNKNOWN = "-"


def _amount(value: float | None) -> float | None:
    """`value` when it is a finite number >= 0, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) and value >= 0 else None


DECIMAL = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
BINARY = ((2**40, "T"), (2**30, "B"), (2**20, "M"), (2**10, "k"))  # the spec's token suffixes


def _suffixed(value: float, units: tuple[tuple[float, str], ...]) -> str:
    """`value` (at least the smallest unit) in the largest unit it reaches, 3 significant digits. A value
    that rounds up to 1000 of a unit is written in the next one: 1_024_000 tokens -> '0.977M', not
    '1e+03k' (what '{:.3g}' makes of 1000)."""
    for i, (scale, suffix) in enumerate(units):
        if value >= scale:
            text = f"{value / scale:.3g}"
            if float(text) < 1000:
                return text + suffix
            if i == 0:
                return f"{value / scale:.0f}{suffix}"
            bigger, bigger_suffix = units[i - 1]
            return f"{value / bigger:.3g}{bigger_suffix}"
    raise ValueError(f"{value} is below the smallest unit")


def format_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 65 -> '1m05s', 7.2 -> '7s', None -> '-'."""
    seconds = _amount(seconds)
    if seconds is None or seconds >= 1e9:  # over 30 years: a clock gone wrong, not a run
        return UNKNOWN
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_count(value: float | None) -> str:
    """Decimal suffixes for counts and rates: 1536 -> '1.54k', 3_145_728 -> '3.15M'."""
    value = _amount(value)
    if value is None:
        return UNKNOWN
    if value >= 999.5:  # 999.6 would read '1e+03'
        return _suffixed(max(value, 1e3), DECIMAL)
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def format_bytes(value: int | None) -> str:
    """Binary units: 3_435_973_837 -> '3.2 GiB'."""
    value = _amount(value)
    if value is None:
        return UNKNOWN
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.1f} {suffix}"
    return f"{int(value)} B"


def format_float(value: float | None, digits: int = 4) -> str:
    """A metric with `digits` significant digits, or '-' when unknown."""
    if value is None:
        return "-"
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


def format_tokens(value: int | None) -> str:
    """Token counts with the spec's binary suffixes (k = 1024, M = 2**20): 3_145_728 -> '3M', 16384 -> '16k'."""
    value = _amount(value)
    if value is None:
        return UNKNOWN
    return _suffixed(value, BINARY) if value >= 2**10 else str(int(value))
