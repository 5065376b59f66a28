"""`tabula run` meeting checkpoint faults as a user would: a resume whose newest checkpoint was damaged on
disk says which it skipped and why, continues from the newest intact one exactly, and refuses a damaged one
named outright; a checkpoint the file system refuses ends the run cleanly (on_write_error: stop) with the
previous one intact and resumable."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

TABULA = Path(sys.executable).with_name("tabula")

pytestmark = pytest.mark.slow

# 20 steps of 512 tokens, a checkpoint every 8 steps
TINY = tiny_spec_yaml().replace("budget: {tokens: 24k}", "budget: {tokens: 10k}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def work(tmp_path, cache):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "cache").symlink_to(cache)  # prepared data shared by the tests, each with its own runs/
    return tmp_path


def tabula(work: Path, *args: str, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """`tabula ARGS` in `work`. `max_file_bytes`: the file system refuses to grow any file past it (RLIMIT_FSIZE:
    the write fails with EFBIG, as a full disk fails it with ENOSPC; no root, nothing mounted)."""
    env = {**os.environ, "TABULA_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("TABULA_TEST_NAN_AT_STEP", None)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([str(TABULA), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if max_file_bytes else None)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; a step trained again after a resume keeps its last value."""
    return {e["step"]: e["loss"] for e in events(run_dir) if e["kind"] == "train"}


def test_resume_auto_falls_back_past_damaged_weights(work):
    tmp_path = work
    assert "budget: {tokens: 10k}" in TINY
    first = tabula(tmp_path, "run", "tiny.yaml", "--headless", "--max-steps", "16", "--run-dir", "runs/damaged")
    assert first.returncode == 0, first.stdout + first.stderr
    damaged, direct = tmp_path / "runs" / "damaged", tmp_path / "runs" / "direct"
    assert sorted(p.name for p in (damaged / "checkpoints").iterdir()) == ["step-000008", "step-000016"]

    # the reference: the same run resumed from step 8 on purpose (an older run: --resume auto passes it by)
    shutil.copytree(damaged, direct)
    manifest = json.loads((direct / "manifest.json").read_text())
    manifest["created"] -= 1000
    (direct / "manifest.json").write_text(json.dumps(manifest))

    weights = damaged / "checkpoints" / "step-000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (damaged / "checkpoints" / ".tmp-step-000024").mkdir()  # a write a crash interrupted
    (damaged / "checkpoints" / ".tmp-step-000024" / "optimizer.pt").write_bytes(b"\0" * 4096)

    named = tabula(tmp_path, "run", "tiny.yaml", "--headless", "--resume", "runs/damaged/checkpoints/step-000016")
    assert named.returncode == 2, named.stdout + named.stderr
    assert "Traceback" not in named.stderr
    assert "--resume runs/damaged/checkpoints/step-000016: the checkpoint is damaged: model.safetensors has" in named.stderr
    assert "the newest intact checkpoint before it is runs/damaged/checkpoints/step-000008" in named.stderr

    resumed = tabula(tmp_path, "run", "tiny.yaml", "--headless", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    assert "tabula run: warning: skipped checkpoint step-000016: model.safetensors has" in resumed.stderr
    assert "; resuming from step-000008" in resumed.stderr
    assert not (damaged / "checkpoints" / ".tmp-step-000024").exists()
    recorded = events(damaged)
    warnings = [e for e in recorded if e["kind"] == "log" and e["level"] == "warning"]
    assert warnings and warnings[0]["message"].startswith("skipped checkpoint step-000016: model.safetensors has")
    starts = [e for e in recorded if e["kind"] == "start"]
    assert starts[1]["resumed_from"].endswith("step-000008") and starts[1]["step"] == 8
    assert recorded[-1]["kind"] == "end" and recorded[-1]["reason"] == "finished"

    reference = tabula(tmp_path, "run", "tiny.yaml", "--headless", "--resume", "runs/direct/checkpoints/step-000008")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert "skipped" not in reference.stderr
    assert sorted(losses(damaged)) == list(range(1, 21))
    assert losses(damaged) == losses(direct)  # steps 9-20 trained again from step 8, to the last bit


def test_a_refused_checkpoint_stops_cleanly_and_the_previous_one_resumes(work):
    first = tabula(work, "run", "tiny.yaml", "--headless", "--max-steps", "8", "--run-dir", "runs/refused")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = work / "runs" / "refused"
    refused = tabula(work, "run", "tiny.yaml", "train.checkpoint.on_write_error=stop", "--headless", "--resume", "runs/refused",
                     max_file_bytes=200_000)  # the weights (~420 kB) and optimizer state (~840 kB) cannot be written
    output = refused.stdout + refused.stderr
    assert refused.returncode == 3, output
    assert "Traceback" not in output
    assert "checkpoint at step 16 was not written (" in output and "the previous checkpoint step-000008 is intact" in output
    assert "(train.checkpoint.on_write_error: stop)" in output
    assert "the last good checkpoint is runs/refused/checkpoints/step-000008" in output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000008"]  # no temporary folder left
    end = events(run_dir)[-1]
    assert end["kind"] == "end" and end["reason"] == "failed" and end["step"] == 16

    resumed = tabula(work, "run", "tiny.yaml", "--headless", "--resume", "runs/refused")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    starts = [e for e in events(run_dir) if e["kind"] == "start"]
    assert starts[-1]["resumed_from"].endswith("step-000008") and events(run_dir)[-1]["reason"] == "finished"
