"""The headless console's number formats: what a user reads in every progress line."""

from __future__ import annotations

import io

import pytest

from tabula.runtime.console import Console, count, parameters
from tabula.schemas.units import format_duration


@pytest.mark.parametrize(
    ("n", "base", "text"),
    [
        (999, 1024, "999"),
        (1536, 1024, "1.5k"),
        (3 * 2**20, 1024, "3.0M"),
        (150 * 2**10, 1024, "150k"),
        (1023.6, 1024, "1.0k"),  # rounds to 1024 units: the next unit, not "1024"
        (999_600, 1000, "1.0M"),  # not "1000k"
        (1_024_000, 1024, "1.0M"),  # 1000k, the quickstart's step 250
        (1_022_976, 1024, "999k"),
        (278_326_656, 1000, "278M"),
        (1_300_000_000, 1000, "1.3B"),
        (-2048, 1024, "-2.0k"),
        (0, 1024, "0"),
    ],
)
def test_counts_read_with_one_decimal(n: float, base: int, text: str) -> None:
    assert (count if base == 1024 else parameters)(n) == text


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59.9, 61, 3600 + 120)] == ["0s", "59s", "1m01s", "1h02m"]


def test_train_line_reads_step_tokens_loss_and_eta() -> None:
    out = io.StringIO()
    console = Console(out)
    console(
        {
            "kind": "start", "time": 0.0, "step": 0, "tokens": 0, "run_name": "quick", "total_steps": 100,
            "total_tokens": 400 * 1024, "parameters": 3_800_000, "precision": "fp32", "device": "cpu", "world_size": 1,
            "stages": [{"seq_len": 128, "until_tokens": 400 * 1024}],
        }
    )
    console(
        {
            "kind": "train", "time": 10.0, "step": 50, "tokens": 200 * 1024, "loss": 5.3125, "lr": 1e-3,
            "tokens_per_s": 6100.0, "mfu": 0.5, "grad_norm": 1.0, "step_time": 0.2,
        }
    )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("quick: 3.8M parameters, fp32 on cpu")
    train = lines[-1]
    assert "50/100" in train and "200k/400k tok" in train and "loss 5.3125" in train
    assert "ETA" in train


def test_the_header_says_whether_the_run_compiles_and_why() -> None:
    from tabula.compiler.plan import make_plan
    from tabula.schemas.loader import load_spec
    from runtime_helpers import QUICKSTART

    out = io.StringIO()
    decision = make_plan(load_spec(QUICKSTART, ["train.budget.tokens=80k"]), vocab_size=4096).compile
    Console(out)({
        "kind": "start", "time": 0.0, "step": 0, "tokens": 0, "run_name": "quick", "total_steps": 20, "total_tokens": 80 * 1024,
        "parameters": 3_800_000, "precision": "fp32", "device": "cpu", "world_size": 1,
        "stages": [{"seq_len": 128, "until_tokens": 80 * 1024}], "compile": decision.as_dict(),
    })
    assert out.getvalue().rstrip().endswith("; eager: " + decision.reason) and "auto: 20 steps would save" in decision.reason
