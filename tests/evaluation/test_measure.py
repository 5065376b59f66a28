"""`tabula plan --measure`: two training steps on this machine, the measured peak memory printed beside the
estimate. The stated tolerance: on the quickstart the estimate is within a factor of 2 of the measured
peak (CPU: resident memory, which the allocator's high-water mark and the math libraries' buffers keep
above the tensors alone; measured 0.65x here, 523 MiB estimated against 810 MiB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tabula.cli import main
from tiny_specs import QUICKSTART

TOLERANCE = 2.0


@pytest.mark.slow
def test_the_quickstart_estimate_is_within_the_tolerance_of_the_measurement(capsys):
    assert main(["plan", str(QUICKSTART), "--measure", "--device", "cpu", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["measured"]
    assert measured["method"] == "resident memory (sampled)" and measured["peak_bytes"] > 0
    assert 1 / TOLERANCE <= measured["ratio"] <= TOLERANCE, measured


PRESETS = ["llama-tiny", "mistral-tiny", "mla-tiny", "mixtral-tiny", "deepseek-v3-tiny",
           pytest.param("jamba-tiny", marks=pytest.mark.xfail(strict=True, reason=(
               "the Mamba layers' resident peak holds ~2.5 GB that does not scale with the micro-batch and the "
               "estimate misses (0.16x at micro-batch 8, 0.55x at the preset's 64)")))]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_each_presets_estimate_is_within_the_tolerance_of_the_measurement(preset):
    """The presets at a micro-batch of 8 (steps of 4k tokens: their own 64 x 256 takes 17-128 s and 4-6.5 GB
    here); at their own batch they measured 0.64-0.73x by hand."""
    spec = QUICKSTART.parent / "presets" / f"{preset}.yaml"
    # a process of its own: resident memory the earlier parameters freed would hide this one's peak
    done = subprocess.run([str(Path(sys.executable).parent / "tabula"), "plan", str(spec), "train.micro_batch=8", "train.batch_tokens=4k",
                           "--measure", "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)["measured"]
    assert 1 / TOLERANCE <= measured["ratio"] <= TOLERANCE, measured


def test_measure_refuses_deepspeed_specs(capsys, specs_dir):
    assert main(["plan", str(specs_dir / "zero2.yaml"), "--measure"]) == 2
    assert "--measure runs one local process" in capsys.readouterr().err
