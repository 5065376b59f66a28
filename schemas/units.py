"""How quantities read: counts, token counts, bytes and durations, for every place that shows them
(the console, `tabula plan`, `tabula diff`, the dashboard). `quantities.py` parses what users write;
this module writes numbers back.

Styles that differ on purpose are parameters of one function, never a second implementation:
three significant digits (`3.82M`, the dashboard and the plan) or one decimal (`3.8M`, the
console's compact lines); decimal suffixes (k = 1000: parameters, FLOPs, rates) or the spec's
binary ones (k = 2**10: token counts, as `64k` in a spec); `exact` for a count that must read
back as the same number (the diff). A number that rounds to 1000 of a unit is written in the next
unit (`0.977M`, never `1e+03k` or `1000k`), and no output has an exponent.

Torch-free. None, NaN and infinities read `-` (UNKNOWN).
"""

from __future__ import annotations

import math

UNKNOWN = "-"

DECIMAL = (("", 1), ("k", 10**3), ("M", 10**6), ("B", 10**9), ("T", 10**12))
BINARY = (("", 1), ("k", 2**10), ("M", 2**20), ("B", 2**30), ("T", 2**40))  # the spec's token suffixes
BYTES = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40))


def _number(value: object) -> float | None:
    """`value` as a finite float, or None for None, NaN, infinities and non-numbers (bools too)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def format_count(value: float | None, *, binary: bool = False, decimals: int | None = None, digits: int = 3,
                 exact: bool = False) -> str:
    """A count with a suffix: 1536 -> '1.54k'; `binary=True` for token counts (k = 2**10): 3_145_728 -> '3M'.

    Precision: `digits` significant digits, trailing zeros dropped (3_819_776 -> '3.82M'), or, with
    `decimals`, that many decimals below 100 of the unit and none from 100 on ('3.8M', '3.0M',
    '150k'). Whole numbers below the first unit are written in full (1023 tokens -> '1023'); past the
    largest unit (T) the number just grows. `exact=True`: a suffix only where the number reads back
    exactly (to two decimals: 1048576 -> '1M', 2684354560 -> '2.5B' with binary), else every digit
    (209715). Negative counts are signed; None, NaN and infinities read '-'."""
    number = _number(value)
    if number is None:
        return UNKNOWN
    if number < 0:
        return "-" + format_count(-number, binary=binary, decimals=decimals, digits=digits, exact=exact)
    units = BINARY if binary else DECIMAL
    if exact:
        return _exact(number, units)
    return _suffixed(number, units, decimals, digits, sep="")


def format_bytes(value: float | None, *, decimals: int = 1) -> str:
    """Binary units with `decimals` decimals: 3_435_973_837 -> '3.2 GiB', 512 -> '512 B'. A size
    cannot be negative: that, None, NaN and infinities read '-'."""
    number = _number(value)
    if number is None or number < 0:
        return UNKNOWN
    return _suffixed(number, BYTES, decimals, 3, sep=" ", keep_decimals=True)


def format_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 65 -> '1m05s', 7.2 -> '7s', 90061 -> '1d01h'; None or negative -> '-'."""
    number = _number(seconds)
    if number is None or number < 0:
        return UNKNOWN
    whole = int(number)
    if whole >= 86400:
        return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _suffixed(number: float, units: tuple[tuple[str, int], ...], decimals: int | None, digits: int, *, sep: str,
              keep_decimals: bool = False) -> str:
    """`number` (>= 0) in the largest unit it reaches; one that rounds to 1000 there goes to the next.
    A whole number below the first unit is written in full."""
    index = max(i for i, (_, scale) in enumerate(units) if number >= scale or i == 0)
    if index == 0 and number.is_integer():
        return f"{number:.0f}{sep}{units[0][0]}".rstrip()
    text = _digits(number / units[index][1], decimals, digits, keep_decimals)
    if float(text) >= 1000 and index + 1 < len(units):
        index += 1
        text = _digits(number / units[index][1], decimals, digits, keep_decimals)
    return f"{text}{sep}{units[index][0]}".rstrip()


def _digits(x: float, decimals: int | None, digits: int, keep_decimals: bool) -> str:
    """`x` (>= 0) without an exponent: `decimals` fixed decimals (none from 100 on, unless
    `keep_decimals`), or else `digits` significant digits with trailing zeros dropped."""
    if decimals is not None:
        text = f"{x:.{decimals}f}"
        return text if keep_decimals or float(text) < 100 else f"{x:.0f}"
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    if "e" not in text:
        return text
    if x >= 1:  # more integer digits than significant ones: all of them
        return f"{x:.0f}"
    places = digits - 1 - math.floor(math.log10(x))  # a tiny number: fixed point, `digits` significant
    return f"{x:.{places}f}".rstrip("0").rstrip(".")


def _exact(number: float, units: tuple[tuple[str, int], ...]) -> str:
    if not number.is_integer():
        return _digits(number, None, 6, False)
    whole = int(number)
    for suffix, scale in reversed(units[1:]):
        if whole >= scale and (whole * 100) % scale == 0:
            hundredths = whole * 100 // scale
            return f"{hundredths // 100}.{hundredths % 100:02d}".rstrip("0").rstrip(".") + suffix
    return str(whole)
