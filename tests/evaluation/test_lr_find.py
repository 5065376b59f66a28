"""The learning-rate range test: the suggestion rules on known curves, `tabula lr-find` on the tiny spec
(ramp, divergence stop, PNG, --apply keeping the file's comments), and on the quickstart, whose tuned
rate (2e-3) the suggestion must land within a decade of."""

from __future__ import annotations

import math

import pytest

from evaluation_helpers import TINY_RUN_OVERRIDES
from tabula.cli import main
from tabula.runtime.evaluation.lr_find import schedule, smooth, steepest, valley
from tiny_specs import QUICKSTART, tiny_spec_yaml


def test_the_ramp_is_exponential_and_the_rules_find_the_fall():
    lrs = schedule(1e-6, 1.0, 61)
    assert lrs[0] == 1e-6 and math.isclose(lrs[-1], 1.0) and math.isclose(lrs[30], 1e-3)
    # a noisy loss, flat until 1e-4, falling fastest at 1e-3, lowest near 1e-2, then diverging
    losses = [5.0 - 2.0 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + (20 * (math.log10(lr) + 2) ** 2 if lr > 1e-2 else 0)
              + 0.03 * math.sin(7 * i) for i, lr in enumerate(lrs)]
    smoothed = smooth(losses, beta=0.0)
    assert smoothed == losses
    assert math.isclose(steepest(lrs, smoothed), 1e-3, rel_tol=0.3)
    assert 1e-4 < valley(lrs, smoothed) < 1e-2
    assert steepest(lrs[:2], smoothed[:2]) is None and valley(lrs[:2], smoothed[:2]) is None


def test_lr_find_on_the_tiny_spec_writes_the_plot_and_applies_keeping_comments(tiny_run, tiny_cache, tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    text = "# the tiny spec, with a comment to keep\n" + tiny_spec_yaml().replace("name: tiny", "name: tiny  # its name")
    spec.write_text(text)
    png = tmp_path / "lr.png"
    code = main(["lr-find", str(spec), *TINY_RUN_OVERRIDES, "--steps", "8", "--min", "1e-4", "--max", "50",
                 "--cache-dir", str(tiny_cache), "--png", str(png), "--no-plot", "--apply", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "stopped: diverged at" in out  # 50 is far past what a 2-layer model takes
    line = next(line for line in out.splitlines() if line.startswith("suggested (valley rule): train.optimizer.lr="))
    suggestion = float(line.split("=")[1].split()[0])
    assert 1e-4 <= suggestion <= 50
    after = spec.read_text().splitlines()
    added = ["  optimizer:", f"    lr: {suggestion}"]
    at = after.index(added[0])
    assert after[at:at + 2] == added and after[:at] + after[at + 2:] == text.splitlines()  # nothing else moved
    from tabula.schemas.loader import load_spec

    assert load_spec(spec).train.optimizer.lr == suggestion
    assert not (tmp_path / "runs").exists()  # no run folder was made


def test_lr_find_refuses_a_bad_range(capsys):
    assert main(["lr-find", str(QUICKSTART), "--min", "1", "--max", "0.1"]) == 2
    assert "0 < --min < --max" in capsys.readouterr().err


@pytest.mark.slow
def test_the_quickstart_suggestion_is_within_a_decade_of_its_tuned_rate(tabula_cache):
    """The quickstart's own model (d_model 256, 4 layers, 4096-token BPE) and optimizer; less text for its
    tokenizer and 1k-token batches to stay cheap."""
    from tabula.runtime.evaluation.lr_find import range_test
    from tabula.schemas.loader import load_spec

    spec = load_spec(QUICKSTART, ["data.tokenizer.max_chars=512k", "data.sources.stdlib.max_files=60",
                                  "train.batch_tokens=1k"])
    result = range_test(spec, steps=40, min_lr=1e-5, max_lr=1.0, device="cpu")
    tuned = spec.train.optimizer.lr
    assert tuned == 2e-3
    assert tuned / 10 <= result.valley <= tuned * 10, result
    assert tuned / 10 <= result.steepest <= tuned * 10, result
