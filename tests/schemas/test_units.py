"""The one number formatter (console, plan, diff, dashboard): never an exponent, a number that
rounds to 1000 of a unit in the next one, and what it writes reads back as about the value."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tabula.schemas.quantities import parse_token_count
from tabula.schemas.units import BINARY, BYTES, DECIMAL, UNKNOWN, format_bytes, format_count, format_duration

COUNT = re.compile(r"^(-?)(\d+(?:\.\d+)?)([kMBT]?)$")
SIZE = re.compile(r"^(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB)$")

values = st.one_of(st.integers(0, 10**18), st.floats(0, 1e18, allow_nan=False, allow_infinity=False))
styles = st.sampled_from([{}, {"decimals": 1}, {"digits": 4}, {"decimals": 2}])


@given(value=values, binary=st.booleans(), style=styles)
def test_counts_have_no_exponent_and_roll_over_to_the_next_unit(value, binary, style):
    text = format_count(value, binary=binary, **style)
    assert "e" not in text
    sign, number, suffix = COUNT.match(text).groups()
    assert sign == ""
    units = dict(BINARY if binary else DECIMAL)
    whole_below_first = suffix == "" and float(value).is_integer() and value < units["k"]
    if suffix != "T" and not whole_below_first:
        assert float(number) < 1000, text  # 1000k is 1M (or 0.977M with binary suffixes)
    scale = units[suffix]
    decimals = style.get("decimals")
    if decimals is not None:  # `decimals` decimals below 100 of the unit, none from 100 on
        tolerance = 0.5 * 10.0 ** -(decimals if float(number) < 100 else 0) * scale
    else:
        tolerance = 0.5 * 10.0 ** (1 - style.get("digits", 3)) * value
    assert abs(float(number) * scale - value) <= tolerance * 1.000001 + 1e-9 * value


@given(value=st.integers(0, 2**50))
def test_exact_token_counts_read_back_as_the_same_count(value):
    text = format_count(value, binary=True, exact=True)
    assert parse_token_count(text) == value


@given(value=values, decimals=st.sampled_from([1, 2]))
def test_sizes_have_no_exponent_and_roll_over(value, decimals):
    text = format_bytes(value, decimals=decimals)
    number, unit = SIZE.match(text).groups()
    if unit != "TiB" and not (unit == "B" and float(value).is_integer()):
        assert float(number) < 1000, text
    assert abs(float(number) * dict(BYTES)[unit] - value) <= 0.5 * 10.0**-decimals * dict(BYTES)[unit] * 1.000001


@pytest.mark.parametrize(("value", "kwargs", "text"), [
    (1_023_999, {"binary": True}, "0.977M"),  # what `tabula plan` printed as '1e+03k'
    (1_023_999, {"binary": True, "decimals": 1}, "1.0M"),
    (3_819_776, {}, "3.82M"),
    (3_819_776, {"decimals": 1}, "3.8M"),
    (278_340_480, {"digits": 4}, "278.3M"),
    (1e-5, {}, "0.00001"),
    (-2048, {"binary": True, "decimals": 1}, "-2.0k"),
    (2_684_354_560, {"binary": True, "exact": True}, "2.5B"),
    (209_715, {"binary": True, "exact": True}, "209715"),
    (None, {}, UNKNOWN),
    (math.nan, {}, UNKNOWN),
    (math.inf, {"binary": True}, UNKNOWN),
])
def test_count_styles(value, kwargs, text):
    assert format_count(value, **kwargs) == text


def test_sizes_and_durations():
    assert [format_bytes(v) for v in (0, 512, 1023.96 * 2**20, 3_435_973_837, -1, None)] == [
        "0 B", "512 B", "1.0 GiB", "3.2 GiB", UNKNOWN, UNKNOWN]
    assert format_bytes(975_175_680, decimals=2) == "930.00 MiB"
    assert [format_duration(v) for v in (0, 59.9, 65, 3725, 90061, -1, None)] == [
        "0s", "59s", "1m05s", "1h02m", "1d01h", UNKNOWN, UNKNOWN]
