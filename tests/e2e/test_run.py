"""`tabula run` as a user runs it: every run-directory file, exact resume after --max-steps and after
SIGKILL, SIGTERM's checkpoint, each non-finite policy, resume with a changed spec, Aim's record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted_nan import subprocess_env
from tiny_specs import tiny_spec_yaml

TABULA = Path(sys.executable).with_name("tabula")

pytestmark = pytest.mark.slow

# 48 steps of 512 tokens; seq_len 32 then 64 after 8k tokens; a checkpoint every 8 steps.
TINY = tiny_spec_yaml(aim="{enabled: false, repo: runs}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    (folder / "tiny.yaml").write_text(TINY)
    return folder


def tabula(work: Path, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(TABULA), *args], cwd=work, env=_env(work, env), capture_output=True, text=True, timeout=timeout)


def start(work: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(TABULA), *args], cwd=work, env=_env(work, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _env(work: Path, extra: dict | None) -> dict:
    return {**os.environ, "TABULA_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1", **(extra or {})}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; a step that ran twice (after a crash) keeps its last value."""
    return {e["step"]: e["loss"] for e in events(run_dir) if e["kind"] == "train"}


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended first:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def whole(work):
    """An uninterrupted run, recorded in Aim."""
    result = tabula(work, "run", "tiny.yaml", "track.aim.enabled=true", "--headless", "--run-dir", "runs/whole")
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "runs" / "whole", result


def test_a_run_writes_every_file(whole):
    run_dir, result = whole
    for name in ("spec.yaml", "resolved.yaml", "manifest.json", "events.jsonl", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "control").is_dir()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints[-1] == "step-000048" and len(checkpoints) <= 3  # keep_last 2, plus the best
    for name in ("model.safetensors", "optimizer.pt", "rng-rank0.json", "state.json"):
        assert (run_dir / "checkpoints" / "step-000048" / name).is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    from tabula.schemas.canonical import spec_hash
    from tabula.schemas.loader import load_spec

    assert manifest["spec_hash"] == spec_hash(load_spec(run_dir / "resolved.yaml"))
    assert manifest["git"]["commit"] if manifest["git"] else True
    assert manifest["data"]["fingerprint"] and manifest["data"]["tokenizer_hash"]
    assert manifest["packages"]["torch"] and manifest["hardware"]["cpu_count"] >= 1
    assert manifest["command"][:3] == ["tabula", "run", "tiny.yaml"]
    kinds = [e["kind"] for e in events(run_dir)]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert {"train", "eval", "sample", "stage", "checkpoint"} <= set(kinds)
    assert "step 48/48" in result.stdout and "ETA" in result.stdout and "tok/s" in result.stdout


def test_load_model_reads_the_run(whole):
    import torch

    import tabula

    run_dir, _ = whole
    model = tabula.load_model(run_dir)
    logits = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, 512) and torch.isfinite(logits).all()


def test_aim_holds_the_runs_metrics(whole):
    import aim

    run_dir, _ = whole
    manifest = json.loads((run_dir / "manifest.json").read_text())
    repo = aim.Repo(manifest["aim"]["repo"])
    assert manifest["aim"]["run_hash"] in repo.list_all_runs()
    run = repo.get_run(manifest["aim"]["run_hash"])
    metrics = {}
    for metric in run.metrics():
        steps, (values, *_) = metric.data.numpy()  # in step order (values_list() is not)
        metrics[metric.name, metric.context.to_dict().get("subset")] = dict(zip(steps.tolist(), values.tolist()))
    assert metrics["loss", "train"] == pytest.approx(losses(run_dir))
    assert metrics["loss", "val"] == pytest.approx({e["step"]: e["val_loss"] for e in events(run_dir) if e["kind"] == "eval"})
    assert run["spec"]["model"]["d_model"] == 64
    assert run["spec_hash"] == manifest["spec_hash"]


def test_resume_after_max_steps_is_bit_identical(work, whole):
    first = tabula(work, "run", "tiny.yaml", "--headless", "--max-steps", "13", "--run-dir", "runs/split")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "--resume" in first.stdout
    run_dir = work / "runs" / "split"
    assert (run_dir / "checkpoints" / "step-000013").is_dir()
    second = tabula(work, "run", "tiny.yaml", "--headless", "--resume", "runs/split")
    assert second.returncode == 0, second.stdout + second.stderr
    assert losses(run_dir) == losses(whole[0])  # all 48 steps, to the last bit
    starts = [e for e in events(run_dir) if e["kind"] == "start"]
    assert starts[1]["resumed_from"].endswith("step-000013") and starts[1]["step"] == 13


def test_sigkill_then_resume_completes_with_the_same_losses(work, whole):
    run_dir = work / "runs" / "killed"
    process = start(work, "run", "tiny.yaml", "--headless", "--run-dir", "runs/killed")
    wait_for(lambda: any(e["kind"] == "checkpoint" and e["step"] == 16 for e in events(run_dir)), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not any(e["kind"] == "end" for e in events(run_dir))
    result = tabula(work, "run", "tiny.yaml", "--headless", "--resume", "auto")  # auto: the newest run of "tiny"
    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(run_dir) == losses(whole[0])
    assert events(run_dir)[-1]["reason"] == "finished"


def test_sigterm_stops_with_a_checkpoint(work):
    run_dir = work / "runs" / "terminated"
    process = start(work, "run", "tiny.yaml", "--headless", "--run-dir", "runs/terminated")
    wait_for(lambda: any(e["kind"] == "train" and e["step"] >= 3 for e in events(run_dir)), process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    end = events(run_dir)[-1]
    assert end["kind"] == "end" and end["reason"] == "stopped"
    checkpoint = run_dir / "checkpoints" / f"step-{end['step']:06d}"
    assert checkpoint.is_dir() and end["step"] < 48
    assert "SIGTERM" in output and "--resume" in output


@pytest.mark.parametrize("policy", ["skip", "stop", "rollback"])
def test_a_planted_nan_is_handled_by_each_policy(work, policy, tmp_path):
    folder = f"runs/nan-{policy}"
    result = tabula(work, "run", "tiny.yaml", f"train.on_nonfinite={policy}", "--headless", "--max-steps", "14",
                    "--run-dir", folder, env=subprocess_env(tmp_path / "site", 10))
    run_dir = work / folder
    end = events(run_dir)[-1]
    logged = [e["message"] for e in events(run_dir) if e["kind"] == "log" and e["level"] == "warning"]
    if policy == "stop":
        assert result.returncode == 3
        assert end["reason"] == "failed" and "non-finite loss at step 10" in end["error"] and "step-000008" in end["error"]
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert end["reason"] == "stopped" and end["step"] == (14 if policy == "skip" else 12)
        expected = "batch skipped" if policy == "skip" else "rolled back to checkpoints/step-000008"
        assert len(logged) == 1 and expected in logged[0]
    train = [e for e in events(run_dir) if e["kind"] == "train"]
    skipped = [e for e in train if e["skipped"]]  # the refused update is in the record, its loss is not
    assert [(e["step"], e["skipped"], e["loss"]) for e in skipped] == [(10, 1, None)]
    assert all(e["loss"] is not None for e in train if not e["skipped"])


def test_a_run_that_skips_every_update_fails_with_exit_3(work):
    """lr 1e6 with on_nonfinite: skip refused 63 of 64 updates and still reported 'finished' with exit 0."""
    result = tabula(work, "run", "tiny.yaml", "train.optimizer.lr=1e6", "train.grad_clip=null",
                    "train.on_nonfinite=skip", "--headless", "--run-dir", "runs/lr-1e6")
    assert result.returncode == 3, result.stdout + result.stderr
    end = events(work / "runs" / "lr-1e6")[-1]
    assert end["reason"] == "failed" and "8 updates in a row were non-finite" in end["error"]
    assert "train.max_consecutive_skips: 8" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_resume_with_a_changed_spec(work):
    first = tabula(work, "run", "tiny.yaml", "--headless", "--max-steps", "4", "--run-dir", "runs/changed")
    assert first.returncode == 0, first.stderr
    refused = tabula(work, "run", "tiny.yaml", "model.d_model=96", "--headless", "--resume", "runs/changed")
    assert refused.returncode == 2
    assert "model.d_model: 64 -> 96" in refused.stdout and "model.d_model" in refused.stderr
    accepted = tabula(work, "run", "tiny.yaml", "train.budget.tokens=10k", "--headless", "--resume", "runs/changed")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "train.budget.tokens" in accepted.stdout
    manifest = json.loads((work / "runs" / "changed" / "manifest.json").read_text())
    assert [c["path"] for c in manifest["resumes"][-1]["changes"]] == ["train.budget.tokens"]
    assert events(work / "runs" / "changed")[-1]["step"] == 20  # the new budget: 10k tokens = 20 steps


def test_bad_input_is_one_clear_message(work):
    typo = tabula(work, "run", "tiny.yaml", "train.budgett.tokens=1M", "--headless")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr and "budgett" in typo.stderr
    missing = tabula(work, "run", "tiny.yaml", "--headless", "--resume", "runs/nowhere")
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    bad_flag = tabula(work, "run", "tiny.yaml", "--max-steps", "0")
    assert bad_flag.returncode == 2 and "--max-steps" in bad_flag.stderr


@pytest.mark.multiproc
def test_a_deepspeed_run_resumes_on_the_local_engine(work, whole):
    """10 steps on 2 ranks of ZeRO-2, then `parallel.backend=local --resume`: the local engine continues
    from the sharded optimizer state on the losses of an uninterrupted local run (a fresh optimizer
    state would part from them at the first update)."""
    first = tabula(work, "run", "tiny.yaml", "parallel.backend=deepspeed", "parallel.zero.stage=2", "--nproc", "2",
                   "--headless", "--max-steps", "10", "--run-dir", "runs/ds", timeout=900)  # a cold torch_extensions adds ~3 min
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = tabula(work, "run", "tiny.yaml", "parallel.backend=local", "--headless", "--resume", "runs/ds")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming 2 ranks ZeRO-2 -> a local run: weights and optimizer state kept" in second.stdout
    assert "[WARNING]" not in second.stdout + second.stderr  # DeepSpeed's, on importing it to read its files
    run_dir = work / "runs" / "ds"
    got, reference = losses(run_dir), losses(whole[0])
    assert sorted(got) == list(range(1, 49))
    # ranks sum gradients in another order than one process: float32 rounding, not bit for bit
    worst = max(abs(got[step] - reference[step]) for step in got)
    assert worst < 1e-4, f"losses differ from the local run's by up to {worst:.2e}"
    starts = [e for e in events(run_dir) if e["kind"] == "start"]
    assert [s["backend"] for s in starts] == ["deepspeed", "local"]
    assert starts[1]["step"] == 10 and starts[1]["resumed_from"].endswith("step-000010")
    assert events(run_dir)[-1]["reason"] == "finished"


def test_a_deepspeed_checkpoint_the_local_engine_cannot_read_is_refused(work, whole):
    import shutil

    shutil.copytree(whole[0], work / "runs" / "fp16")
    checkpoint = work / "runs" / "fp16" / "checkpoints" / "step-000048"
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "deepspeed").mkdir()
    layout = {"zero_stage": 2, "world_size": 2, "precision": "fp16", "groups": []}
    (checkpoint / "deepspeed" / "layout.json").write_text(json.dumps(layout))
    from tabula.runtime.integrity import write_checksums

    write_checksums(checkpoint)  # an intact checkpoint in DeepSpeed's layout, not a damaged local one
    result = tabula(work, "run", "tiny.yaml", "--headless", "--resume", "runs/fp16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tabula run: cannot resume from {checkpoint.relative_to(work)}: a DeepSpeed fp16 checkpoint keeps a loss "
        "scale the local engine does not read; resume it under DeepSpeed"]
