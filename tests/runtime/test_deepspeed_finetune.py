"""Fine-tuning under DeepSpeed on 2 CPU ranks (gloo): LoRA on ZeRO-2 and ZeRO-3, prefix tuning on ZeRO-2, DoRA on ZeRO-3, each
through a checkpoint and a resume, against the local engine's losses; checkpoints hold the adapters alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_specs import tiny_spec_yaml

WORKER = Path(__file__).with_name("adapters_worker.py")

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

TOLERANCE = 1e-4  # the ranks average gradients in another order than one process sums them


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepspeed-finetune")
    (folder / "tiny.yaml").write_text(tiny_spec_yaml(micro_batch=4))
    previous = os.environ.get("TABULA_CACHE_DIR")
    os.environ["TABULA_CACHE_DIR"] = str(folder / "cache")
    yield folder
    if previous is None:
        os.environ.pop("TABULA_CACHE_DIR", None)
    else:
        os.environ["TABULA_CACHE_DIR"] = previous


def losses(run_dir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    return {e["step"]: e["loss"] for e in events if e["kind"] == "train"}


@pytest.fixture(scope="module")
def local(work) -> dict[str, dict[int, float]]:
    """The local engine's losses over 10 steps of each fine-tuning run (in this process)."""
    sys.path.insert(0, str(WORKER.parent))
    from adapters_worker import RUNS

    from tabula.compiler import make_plan
    from tabula.runtime.build import build_local_engine
    from tabula.runtime.data import prepare
    from tabula.runtime.engine import pick_device
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import create_run_dir
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    found = {}
    for name, _, finetune in RUNS:
        spec = load_spec(work / "tiny.yaml", overrides=[f"train.finetune={finetune}", "model.max_seq_len=72"])
        prepared = prepare(spec)
        plan = make_plan(spec, vocab_size=prepared.vocab_size)
        run = create_run_dir(work / f"local-{name}", spec, spec_text="", resolved_yaml=canonical_yaml(spec),
                             manifest={"resumes": []}, tokenizer_json=None)
        train(spec, plan, build_local_engine(spec, plan, pick_device()), run, prepared, spec_hash=spec_hash(spec), max_steps=10)
        found[name] = losses(run.path)
    return found


@pytest.fixture(scope="module")
def two_ranks(work, local) -> Path:
    from tabula.runtime.launch import free_port, rank_environment

    world_info = __import__("base64").urlsafe_b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--no_local_rank", str(WORKER), str(work)]
    result = subprocess.run(command, env=rank_environment(2), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0 and (work / "adapters.done").exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return work


@pytest.mark.parametrize("name", ["lora-z2", "lora-z3", "prefix-z2", "dora-z3"])
def test_finetuning_on_two_ranks_matches_the_local_engine_through_a_resume(two_ranks, local, name):
    from safetensors import safe_open

    got = losses(two_ranks / name)
    assert sorted(got) == list(range(1, 11))
    worst = max(abs(got[s] - local[name][s]) for s in got)
    assert worst < TOLERANCE, f"{name}: losses differ from the local engine's by up to {worst:.2e}"
    events = [json.loads(line) for line in (two_ranks / name / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert starts[1]["resumed_from"].endswith("step-000005") and starts[0]["trainable_parameters"] < starts[0]["parameters"]
    with safe_open(str(two_ranks / name / "checkpoints" / "step-000010" / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert names and all(".lora_" in n or n.startswith("virtual_tokens.") for n in names)
