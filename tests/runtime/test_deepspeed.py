"""DeepSpeed on 2 CPU ranks (gloo): ZeRO 0-3 against the local engine, checkpoint and resume, resume onto
another world size or ZeRO stage with the optimizer state, a rank killed mid-run, the user's command.

DeepSpeed's start-up costs tens of seconds a launch here, so the runs are grouped: one 2-rank launch
trains every stage (and the 2-rank moves), one 1-rank launch does the 2 -> 1 moves (deepspeed_worker.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

TABULA = Path(sys.executable).with_name("tabula")
WORKER = Path(__file__).with_name("deepspeed_worker.py")

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

# Losses of the same steps on the same data: the ranks' gradients are averaged in another order than one
# process sums them, so they agree to float32 rounding (about 1e-6 here), not bit for bit.
TOLERANCE = 1e-4

# 4 sequences a micro-batch: gradient accumulation 4 on 1 rank, 2 on each of 2 ranks (seq_len 32).
TINY = tiny_spec_yaml(micro_batch=4)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepspeed")
    (folder / "tiny.yaml").write_text(TINY)
    previous = os.environ.get("TABULA_CACHE_DIR")
    os.environ["TABULA_CACHE_DIR"] = str(folder / "cache")
    yield folder
    if previous is None:
        os.environ.pop("TABULA_CACHE_DIR", None)
    else:
        os.environ["TABULA_CACHE_DIR"] = previous


def train_losses(run_dir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    return {e["step"]: e["loss"] for e in events if e["kind"] == "train"}


@pytest.fixture(scope="module")
def local_losses(work) -> dict[int, float]:
    """The local engine's losses over 15 steps of the same spec (in this process)."""
    from tabula.compiler import make_plan
    from tabula.runtime.data import prepare
    from tabula.runtime.engine import pick_device
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import create_run_dir
    from tabula.runtime.build import build_local_engine
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    spec = load_spec(work / "tiny.yaml")
    prepared = prepare(spec)
    plan = make_plan(spec, vocab_size=prepared.vocab_size)
    run = create_run_dir(work / "local", spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                         tokenizer_json=None)
    engine = build_local_engine(spec, plan, pick_device())
    train(spec, plan, engine, run, prepared, spec_hash=spec_hash(spec), max_steps=15)
    return train_losses(run.path)


def launch_worker(work: Path, mode: str, ranks: int) -> None:
    from tabula.runtime.launch import free_port, rank_environment

    world_info = __import__("base64").urlsafe_b64encode(json.dumps({"localhost": list(range(ranks))}).encode()).decode()
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--no_local_rank", str(WORKER), str(work), mode]
    result = subprocess.run(command, env=rank_environment(ranks), capture_output=True, text=True, timeout=900)  # a cold ~/.cache/torch_extensions adds ~3 min
    assert result.returncode == 0 and (work / f"{mode}.done").exists(), result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def two_ranks(work, local_losses) -> Path:
    launch_worker(work, "stages", 2)
    return work


@pytest.fixture(scope="module")
def one_rank(two_ranks) -> Path:
    launch_worker(two_ranks, "one-rank", 1)
    return two_ranks


def assert_close(run_dir: Path, reference: dict[int, float], steps: range) -> None:
    got = train_losses(run_dir)
    assert sorted(got) == list(steps), f"{run_dir.name}: steps {sorted(got)}"
    worst = max(abs(got[s] - reference[s]) for s in steps)
    assert worst < TOLERANCE, f"{run_dir.name}: losses differ from the local engine's by up to {worst:.2e}: {got}"


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_matches_local_engine_through_a_checkpoint_and_resume(two_ranks, local_losses, stage):
    """Steps 1-5, a checkpoint, then steps 6-10 in a new engine resumed from it, on 2 ranks."""
    run = two_ranks / f"z{stage}"
    assert_close(run, local_losses, range(1, 11))
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert [s["backend"] for s in starts] == ["deepspeed", "deepspeed"] and starts[1]["world_size"] == 2
    assert starts[1]["resumed_from"].endswith("step-000005")
    layout = json.loads((run / "checkpoints" / "step-000010" / "deepspeed" / "layout.json").read_text())
    assert (layout["zero_stage"], layout["world_size"]) == (stage, 2)


@pytest.fixture(scope="module")
def moe_runs(work) -> Path:
    launch_worker(work, "moe", 2)
    return work


def test_a_mixture_of_experts_trains_alike_under_every_zero_stage(moe_runs):
    """The same MoE steps under ZeRO 0-3: the same losses, routing events from rank 0, and the balancing bias,
    moved by the load summed over both ranks, saved alike."""
    from safetensors.torch import load_file

    two_ranks = moe_runs
    losses = [train_losses(two_ranks / f"moe-z{stage}") for stage in range(4)]
    assert sorted(losses[0]) == [1, 2, 3]
    assert all(max(abs(got[s] - losses[0][s]) for s in got) < TOLERANCE for got in losses[1:]), losses
    events = [json.loads(line) for line in (two_ranks / "moe-z3" / "events.jsonl").read_text().splitlines()]
    routing = [e for e in events if e["kind"] == "routing"]
    assert len(routing) == 3 and all(len(e["load"]) == 2 and abs(sum(e["load"][0]) - 1) < 1e-3 for e in routing)
    biases = [load_file(str(two_ranks / f"moe-z{stage}" / "checkpoints" / "step-000003" / "model.safetensors"))["blocks.0.mlp.expert_bias"]
              for stage in range(4)]
    assert biases[0].abs().sum() > 0 and all(bias.allclose(biases[0], atol=1e-6) for bias in biases)


def test_consolidated_weights_load_as_on_local_runs(two_ranks):
    import torch

    import tabula

    models = [tabula.load_model(two_ranks / name) for name in ("z0", "z3")]
    ids = torch.arange(16).view(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(models[0](ids), models[1](ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["z2-to-z1", "z2-to-z3"])
def test_resume_into_another_zero_stage_keeps_optimizer_state(two_ranks, local_losses, name):
    assert_close(two_ranks / name, local_losses, range(11, 16))


def test_a_local_run_moves_onto_deepspeed_ranks(two_ranks, local_losses):
    assert_close(two_ranks / "local-to-z2", local_losses, range(9, 14))


def test_a_deepspeed_run_moves_back_to_the_local_engine(two_ranks, local_losses):
    from tabula.compiler import make_plan
    from tabula.runtime.data import prepare
    from tabula.runtime.engine import pick_device
    from tabula.runtime.loop import train
    from tabula.runtime.reshard import prepare_local_resume
    from tabula.runtime.rundir import create_run_dir
    from tabula.runtime.build import build_local_engine
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    checkpoint = two_ranks / "z3" / "checkpoints" / "step-000010"
    prepare_local_resume(checkpoint)
    spec = load_spec(two_ranks / "tiny.yaml")
    prepared = prepare(spec)
    plan = make_plan(spec, vocab_size=prepared.vocab_size)
    run = create_run_dir(two_ranks / "z3-to-local", spec, spec_text="", resolved_yaml=canonical_yaml(spec),
                         manifest={"resumes": []}, tokenizer_json=None)
    train(spec, plan, build_local_engine(spec, plan, pick_device()), run, prepared, spec_hash=spec_hash(spec),
          max_steps=5, resume_from=checkpoint)
    assert_close(run.path, local_losses, range(11, 16))


@pytest.mark.parametrize("name", ["z0-to-1r", "z1-to-1r", "z2-to-1r", "z3-to-1r", "z2-to-1r-z1"])
def test_resume_from_two_ranks_into_one_keeps_optimizer_state(one_rank, local_losses, name):
    assert_close(one_rank / name, local_losses, range(11, 16))
    if name != "z0-to-1r":  # a ZeRO-0 checkpoint loads natively at any world size
        assert (one_rank / name.split("-")[0] / "checkpoints" / "step-000010" / "deepspeed" / "universal" / "zero").is_dir()


# ---------------------------------------------------------------- as a user runs it


def tabula(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(TABULA), *args], cwd=work, capture_output=True, text=True, timeout=timeout)


def test_user_command_runs_two_ranks_and_exports(work, local_losses):
    """20 steps: past the evaluation, sample and curriculum stage change (seq_len 32 -> 64) at step 16."""
    result = tabula(work, "run", "tiny.yaml", "--nproc", "2", "parallel.backend=deepspeed", "parallel.zero.stage=2",
                    "--headless", "--max-steps", "20", "--run-dir", "cli")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 20/48" in result.stdout and "[INFO]" not in result.stdout  # DeepSpeed's log lines held back
    events = [json.loads(line) for line in (work / "cli" / "events.jsonl").read_text().splitlines()]
    assert events[0]["world_size"] == 2 and events[-1]["kind"] == "end" and events[-1]["reason"] == "stopped"
    assert {"eval", "sample", "stage"} <= {e["kind"] for e in events}
    got = train_losses(work / "cli")
    assert sorted(got) == list(range(1, 21))
    assert max(abs(got[s] - local_losses[s]) for s in range(1, 16)) < TOLERANCE
    exported = tabula(work, "export", "cli", "--format", "hf", "--out", "cli-hf")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (work / "cli-hf" / "config.json").exists()


def _rank_pid(parent: int, rank: int) -> int | None:
    import psutil

    for child in psutil.Process(parent).children(recursive=True):
        try:
            if "tabula.runtime.rank" in child.cmdline() and child.environ().get("RANK") == str(rank):
                return child.pid
        except psutil.Error:
            continue
    return None


def test_a_rank_killed_mid_run_ends_the_run_with_a_clear_error(work):
    run_dir = work / "killed"
    process = subprocess.Popen([str(TABULA), "run", "tiny.yaml", "parallel.backend=deepspeed", "parallel.zero.stage=1",
                                "train.budget.tokens=2M", "--nproc", "2", "--headless", "--run-dir", str(run_dir)],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if events.exists() and events.read_text().count('"kind":"train"') >= 3:
            break
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.5)
    pid = _rank_pid(process.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)  # never a hang
    assert process.returncode == 3, output
    end = [json.loads(line) for line in events.read_text().splitlines()][-1]
    assert end["kind"] == "end" and end["reason"] == "failed"
    assert "rank" in end["error"], end["error"]
    assert "run failed" in output or "another rank" in output, output


def test_the_launcher_holds_the_run_folder_for_its_ranks_until_they_end(work):
    """A second session is refused while the ranks train (naming tabula's pid and its DeepSpeed launcher's);
    SIGKILL of `tabula run` leaves the folder locked only while the launcher's ranks still run, then it
    resumes."""
    import psutil

    from tabula.runtime.runlock import lock_owner

    run_dir = work / "owned"
    flags = ["tiny.yaml", "parallel.backend=deepspeed", "parallel.zero.stage=1", "train.budget.tokens=2M", "--nproc", "2",
             "--headless"]
    process = subprocess.Popen([str(TABULA), "run", *flags, "--run-dir", str(run_dir)], cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 240
    while not (events.exists() and events.read_text().count('"kind":"train"') >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    owner = lock_owner(run_dir)
    assert owner["pid"] == process.pid and owner["holder"]["what"] == "DeepSpeed launcher"
    second = tabula(work, "run", *flags, "--resume", str(run_dir))
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"in use by another session (pid {process.pid} on host " in second.stderr
    assert f"with its DeepSpeed launcher, pid {owner['holder']['pid']}" in second.stderr
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 120  # the launcher and ranks end once their output has nowhere to go
    while lock_owner(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    for child in children:  # whatever is left, so that nothing trains on while the run resumes
        try:
            child.kill()
        except psutil.Error:
            pass
    resumed = tabula(work, "run", *flags, "--max-steps", "1", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    recorded = [json.loads(line) for line in events.read_text().splitlines() if line.startswith("{") and line.endswith("}")]
    assert recorded[-1]["kind"] == "end" and recorded[-1]["reason"] == "stopped"


def test_ctrl_c_stops_every_rank_with_a_checkpoint(work):
    run_dir = work / "interrupted"
    process = subprocess.Popen([str(TABULA), "run", "tiny.yaml", "--nproc", "2", "parallel.backend=deepspeed",
                                "parallel.zero.stage=1", "train.budget.tokens=2M", "--headless", "--run-dir", str(run_dir)],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 240
    while not (events.exists() and events.read_text().count('"kind":"train"') >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    end = [json.loads(line) for line in events.read_text().splitlines()][-1]
    assert end["kind"] == "end" and end["reason"] == "stopped"
    assert (run_dir / "checkpoints" / f"step-{end['step']:06d}" / "model.safetensors").exists()


# Loaded by every rank's interpreter (PYTHONPATH): rank 1 raises in its third optimizer step.
FAIL_RANK_1 = """\
import builtins, os, sys
if os.environ.get("RANK") == "1":
    _import = builtins.__import__
    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        engine = sys.modules.get("tabula.runtime.deepspeed_engine")
        if engine is not None and hasattr(engine, "DeepSpeedEngine"):
            builtins.__import__ = _import
            step, calls = engine.DeepSpeedEngine.step, []
            def failing_step(self, lr):
                calls.append(lr)
                if len(calls) == 3:
                    raise ValueError("the planted failure of rank 1")
                return step(self, lr)
            engine.DeepSpeedEngine.step = failing_step
        return module
    builtins.__import__ = _hook
"""


def test_an_error_on_another_rank_is_the_runs_error(work, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(FAIL_RANK_1)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([str(TABULA), "run", "tiny.yaml", "--nproc", "2", "parallel.backend=deepspeed",
                             "parallel.zero.stage=2", "--headless", "--run-dir", "failed"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)  # a cold torch_extensions build adds ~3 min
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    end = [json.loads(line) for line in (work / "failed" / "events.jsonl").read_text().splitlines()][-1]
    assert end["kind"] == "end" and end["reason"] == "failed" and end["step"] == 2
    # the error, then where the traceback went (the run folder's error.log)
    assert end["error"].startswith("RankFailed: rank 1: ValueError: the planted failure of rank 1"), end["error"]
    assert "run failed: RankFailed: rank 1: ValueError: the planted failure of rank 1" in result.stdout

