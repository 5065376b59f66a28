"""Learning-rate schedules: warmup, shapes, end values, all by tokens seen."""

import math

import pytest

from tabula.runtime.schedules import SCHEDULES, lr_at
from tabula.schemas.train import WSD, Constant, Cosine, Linear

PEAK, TOTAL, WARMUP = 1e-3, 100_000, 10_000


@pytest.mark.parametrize("spec", [Cosine(kind="cosine"), WSD(kind="wsd"), Linear(kind="linear"), Constant(kind="constant")])
def test_warmup_is_linear_from_zero(spec):
    assert lr_at(spec, PEAK, 0, TOTAL, WARMUP) == 0.0
    assert lr_at(spec, PEAK, WARMUP // 2, TOTAL, WARMUP) == pytest.approx(PEAK / 2)
    assert lr_at(spec, PEAK, WARMUP, TOTAL, WARMUP) == pytest.approx(PEAK)


def test_cosine_decays_to_min_ratio_through_the_midpoint():
    spec = Cosine(kind="cosine", min_lr_ratio=0.1)
    middle = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_at(spec, PEAK, middle, TOTAL, WARMUP) == pytest.approx(PEAK * (0.1 + 0.9 * 0.5))
    assert lr_at(spec, PEAK, TOTAL, TOTAL, WARMUP) == pytest.approx(PEAK * 0.1)
    assert lr_at(spec, PEAK, 2 * TOTAL, TOTAL, WARMUP) == pytest.approx(PEAK * 0.1)  # past the budget: holds


def test_cosine_is_monotone_after_warmup():
    spec = Cosine(kind="cosine")
    values = [lr_at(spec, PEAK, t, TOTAL, WARMUP) for t in range(WARMUP, TOTAL + 1, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_holds_the_plateau_then_decays(shape):
    spec = WSD(kind="wsd", decay=0.2, decay_shape=shape, min_lr_ratio=0.0)
    assert lr_at(spec, PEAK, 50_000, TOTAL, WARMUP) == PEAK
    assert lr_at(spec, PEAK, 80_000, TOTAL, WARMUP) == PEAK  # the decay starts at 80%
    assert lr_at(spec, PEAK, 90_000, TOTAL, WARMUP) < PEAK
    assert lr_at(spec, PEAK, TOTAL, TOTAL, WARMUP) == pytest.approx(0.0, abs=1e-12)


def test_wsd_sqrt_decay_value():
    spec = WSD(kind="wsd", decay=0.2, decay_shape="sqrt")
    assert lr_at(spec, PEAK, 90_000, TOTAL, WARMUP) == pytest.approx(PEAK * (1 - math.sqrt(0.5)))


def test_linear_and_constant():
    middle = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_at(Linear(kind="linear"), PEAK, middle, TOTAL, WARMUP) == pytest.approx(PEAK / 2)
    assert lr_at(Constant(kind="constant"), PEAK, TOTAL, TOTAL, WARMUP) == PEAK


def test_no_warmup_starts_at_the_peak():
    assert lr_at(Cosine(kind="cosine"), PEAK, 0, TOTAL, 0) == PEAK


def test_every_schema_kind_is_registered():
    from typing import get_args

    from tabula.schemas.train import Schedule

    union = get_args(get_args(Schedule)[0])
    kinds = {cls.model_fields["kind"].annotation.__args__[0] for cls in union}
    assert kinds == set(SCHEDULES)
