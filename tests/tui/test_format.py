"""The dashboard's number formats: suffixes that never turn into exponents, '-' for what cannot be."""

from __future__ import annotations

import math

import pytest

from tabula.tui.format import UNKNOWN, format_bytes, format_count, format_duration, format_tokens


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (0, "0"),
        (1023, "1023"),
        (1536, "1.5k"),
        (16384, "16k"),
        (3 * 2**20, "3M"),
        (1_022_976, "999k"),
        (1_024_000, "0.977M"),  # 1000k: '{:.3g}' wrote '1e+03k', the quickstart's step 250
        (1_047_552, "0.999M"),
        (2**30 - 1000, "1B"),
        (5000 * 2**40, "5000T"),
        (None, UNKNOWN),
        (-5, UNKNOWN),
        (math.inf, UNKNOWN),
    ],
)
def test_format_tokens(tokens, text):
    assert format_tokens(tokens) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(12.5, "12.5"), (999.4, "999"), (999.6, "1k"), (1536, "1.54k"), (999_999, "1M"), (3_145_728, "3.15M"),
     (math.nan, UNKNOWN)],
)
def test_format_count(value, text):
    assert format_count(value) == text


def test_format_bytes_and_duration():
    assert [format_bytes(v) for v in (512, 3_435_973_837, -1)] == ["512 B", "3.2 GiB", UNKNOWN]
    assert [format_duration(v) for v in (7.2, 65, 3725, 90061, 2e9)] == ["7s", "1m05s", "1h02m", "1d01h", UNKNOWN]
