"""The fsdp backend (FSDP2, and tensor parallelism on a 2-D mesh) on gloo CPU ranks, against the local
engine over the same batches: through a checkpoint and resume (bit-identical to an uninterrupted run),
2 -> 1 ranks (DCP reshards), local -> fsdp, fsdp -> local (convert.py), and tensor parallel 2 ranks.
One 2-rank torchrun launch and one 1-rank process (fsdp_worker.py) run every case; the reference runs in
this process (13 steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

WORKER = Path(__file__).with_name("fsdp_worker.py")

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

RELATIVE = 2e-3  # the bound: within 0.2% of the local engine's loss at every step (float32 sums differ)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    (folder / "tiny.yaml").write_text(tiny_spec_yaml(micro_batch=4))
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


def local_run(work: Path, name: str, steps: int, resume_from: Path | None = None) -> Path:
    from tabula.compiler import make_plan
    from tabula.runtime.build import build_local_engine
    from tabula.runtime.data import prepare
    from tabula.runtime.engine import pick_device
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import create_run_dir
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    spec = load_spec(work / "tiny.yaml")
    prepared = prepare(spec)
    plan = make_plan(spec, vocab_size=prepared.vocab_size)
    run = create_run_dir(work / name, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                         tokenizer_json=None)
    train(spec, plan, build_local_engine(spec, plan, pick_device()), run, prepared, spec_hash=spec_hash(spec),
          max_steps=steps, resume_from=resume_from)
    return run.path


@pytest.fixture(scope="module")
def local_losses(work) -> dict[int, float]:
    return train_losses(local_run(work, "local", 13))


def launch(work: Path, mode: str, ranks: int) -> None:
    from tabula.runtime.launch import free_port, rank_environment

    env = rank_environment(ranks)
    if ranks > 1:
        command = [sys.executable, "-u", "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), str(work), mode]
    else:  # one rank needs no launcher: what torchrun would set
        command = [sys.executable, "-u", str(WORKER), str(work), mode]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and (work / f"{mode}.done").exists(), result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def two_ranks(work, local_losses) -> Path:
    launch(work, "two", 2)
    return work


def assert_follows(run_dir: Path, reference: dict[int, float], steps: range) -> None:
    got = train_losses(run_dir)
    assert sorted(got) == list(steps), f"{run_dir.name}: steps {sorted(got)}"
    worst = max(abs(got[s] - reference[s]) / reference[s] for s in steps)
    assert worst < RELATIVE, f"{run_dir.name}: losses differ from the local engine's by up to {worst:.2%}: {got}"


def test_fsdp_follows_the_local_engine_and_resumes_bit_identically(two_ranks, local_losses):
    assert_follows(two_ranks / "f2", local_losses, range(1, 11))
    straight, resumed = train_losses(two_ranks / "f2"), train_losses(two_ranks / "f2-resumed")
    assert sorted(resumed) == [9, 10] and [resumed[s] for s in (9, 10)] == [straight[s] for s in (9, 10)]  # bit for bit
    events = [json.loads(line) for line in (two_ranks / "f2-resumed" / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert [s["backend"] for s in starts] == ["fsdp"] and starts[0]["world_size"] == 2
    layout = json.loads((two_ranks / "f2" / "checkpoints" / "step-000010" / "fsdp" / "layout.json").read_text())
    assert (layout["world_size"], layout["tensor"]) == (2, 1)


def test_tensor_parallel_follows_the_local_engine(two_ranks, local_losses):
    assert_follows(two_ranks / "t2", local_losses, range(1, 4))
    assert_follows(two_ranks / "t2-from-f2", local_losses, range(11, 13))  # fsdp shards resharded into tensor ones


@pytest.mark.parametrize("name, overrides", [("f2", []), ("t2", ["parallel.tensor.size=2"])])
def test_each_ranks_measured_memory_is_what_the_plan_says(two_ranks, name, overrides):
    """The weights and optimizer state each rank holds, against `tabula plan`'s memory per rank (FSDP2 pads
    uneven shards: within 5%)."""
    from tabula.compiler import make_plan
    from tabula.compiler.estimate import estimate
    from tabula.schemas.loader import load_spec

    spec = load_spec(two_ranks / "tiny.yaml", overrides=["parallel.backend=fsdp", "parallel.world_size=2", *overrides])
    planned = estimate(spec, make_plan(spec, vocab_size=512)).memory_per_rank
    for rank in (0, 1):
        measured = json.loads((two_ranks / f"memory-{name}-rank{rank}.json").read_text())
        for part in ("weights", "optimizer_state"):
            assert measured[part] == pytest.approx(planned[part], rel=0.05), (name, rank, part, measured, planned)


@pytest.mark.parametrize("name", ["f2", "t2"])
def test_evaluation_and_sampling_on_the_ranks_match_the_saved_model(two_ranks, name):
    import torch

    import tabula
    from tabula.runtime.inference.reference import recompute_greedy

    model = tabula.load_model(two_ranks / name)  # its last checkpoint's consolidated weights
    ids = torch.arange(20, 36).view(1, 16)
    with torch.no_grad():
        _, loss = model(ids, ids.roll(-1, dims=1))
        expected = recompute_greedy(model, torch.tensor([[5, 6, 7]]), 3)[0, 3:].tolist()
    for rank in (0, 1):
        measured = json.loads((two_ranks / f"memory-{name}-rank{rank}.json").read_text())
        assert measured["eval_loss"] == pytest.approx(float(loss), rel=1e-4)
        assert measured["generated"] == expected


def test_a_local_checkpoint_resumes_on_fsdp_ranks(two_ranks, local_losses):
    assert_follows(two_ranks / "local-to-f2", local_losses, range(9, 11))


def test_fsdp_two_ranks_to_one_and_to_the_local_engine(two_ranks, local_losses):
    launch(two_ranks, "one", 1)
    assert_follows(two_ranks / "f2-to-1r", local_losses, range(11, 14))
    from tabula.runtime.parallel.convert import write_local_optimizer

    checkpoint = two_ranks / "f2" / "checkpoints" / "step-000010"
    write_local_optimizer(checkpoint)
    assert_follows(local_run(two_ranks, "f2-to-local", 3, resume_from=checkpoint), local_losses, range(11, 14))


# ---------------------------------------------------------------- as a user runs it: two nodes, a rank that fails

# Loaded by every rank's interpreter (PYTHONPATH): rank 1 raises in its third optimizer step.
FAIL_RANK_1 = """\
import builtins, os, sys
if os.environ.get("RANK") == "1":
    _import = builtins.__import__
    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        engine = sys.modules.get("tabula.runtime.parallel.engine")
        if engine is not None and hasattr(engine, "FsdpEngine"):
            builtins.__import__ = _import
            step, calls = engine.FsdpEngine.step, []
            def failing_step(self, lr):
                calls.append(lr)
                if len(calls) == 3:
                    raise ValueError("the planted failure of rank 1")
                return step(self, lr)
            engine.FsdpEngine.step = failing_step
        return module
    builtins.__import__ = _hook
"""


def test_two_nodes_on_loopback_train_together_and_a_failing_rank_ends_both(work, tmp_path):
    """Two `tabula run` launchers with node ranks 0 and 1 (one rank each) meet at a torchrun rendezvous on
    127.0.0.1; rank 1 (node 1) raises in step 3: both launchers end, never a hang, and the run folder
    names the rank and its error."""
    from tabula.runtime.launch import free_port

    (tmp_path / "sitecustomize.py").write_text(FAIL_RANK_1)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    tabula = str(Path(sys.executable).with_name("tabula"))
    flags = ["run", "tiny.yaml", "parallel.backend=fsdp", "parallel.world_size=2", "parallel.nodes=2",
             f"parallel.rendezvous=127.0.0.1:{free_port()}", "--headless", "--run-dir", "nodes"]
    nodes = [subprocess.Popen([tabula, *flags, *extra], cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for extra in ([], ["--node-rank", "1"])]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]  # bounded: a hang fails here
    assert [node.returncode for node in nodes] == [3, 3], outputs
    events = [json.loads(line) for line in (work / "nodes" / "events.jsonl").read_text().splitlines()]
    start, end = events[0], events[-1]
    assert start["kind"] == "start" and start["backend"] == "fsdp" and start["world_size"] == 2
    assert sorted(e["step"] for e in events if e["kind"] == "train") == [1, 2]
    assert end["kind"] == "end" and end["reason"] == "failed", end
    assert "rank 1: ValueError: the planted failure of rank 1" in end["error"], end["error"]
    assert (work / "nodes" / "ranks" / "rank-1.error").read_text().startswith("rank 1: ValueError")
    assert "run failed:" in outputs[0] and "the planted failure of rank 1" in outputs[1], outputs
