"""Pipeline parallelism (DeepSpeed's PipelineModule, 2 stages) on 2 CPU ranks (gloo): losses, evaluation and
gradient norms follow the local engine over the same batches, through a checkpoint and a resume; the
pipeline's checkpoint moves to the local engine with its optimizer state (through the universal format).
One DeepSpeed launch (tests/runtime/pipeline_worker.py): its start-up costs tens of seconds here."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

WORKER = Path(__file__).with_name("pipeline_worker.py")
QUICKSTART = Path(__file__).resolve().parents[2] / "specs" / "quickstart.yaml"
# 0.2% is the bound; the stages compute what one process computes, so it holds to float32 rounding
TOLERANCE = 2e-3

# d_model 32, 2 layers, one seq_len: 8 sequences a step in micro-batches of 4, the pipeline's 2 micro-batches
TINY = f"""\
extends: {QUICKSTART}
name: tiny-pipe
model:
  d_model: 32
  n_layers: 2
  max_seq_len: 32
  block: {{mlp: {{kind: swiglu, hidden: 64}}}}
data:
  tokenizer: {{kind: bpe, vocab_size: 320, max_chars: 64k}}
  sources:
    stdlib: {{kind: python_stdlib, max_files: 8}}
  curriculum:
    - {{seq_len: 32, mix: {{stdlib: 1.0}}}}
train:
  batch_tokens: 256
  micro_batch: 4
  budget: {{tokens: 4k}}
  eval: {{every_tokens: 1024, tokens: 256, sample: {{max_new_tokens: 2}}}}
  checkpoint: {{every_tokens: 1024, keep_last: 2}}
  log: {{every_steps: 1}}
track:
  runs_dir: runs
  aim: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "tiny.yaml").write_text(TINY)
    previous = os.environ.get("TABULA_CACHE_DIR")
    os.environ["TABULA_CACHE_DIR"] = str(folder / "cache")
    yield folder
    if previous is None:
        os.environ.pop("TABULA_CACHE_DIR", None)
    else:
        os.environ["TABULA_CACHE_DIR"] = previous


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["kind"] == kind]


def train_local(work: Path, name: str, steps: int, resume_from: Path | None = None) -> Path:
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
def local(work) -> Path:
    """The local engine's reference run: 12 steps of the same spec (in this process)."""
    return train_local(work, "local", 12)


@pytest.fixture(scope="module")
def pipeline(work, local) -> Path:
    from tabula.runtime.launch import free_port, rank_environment

    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    command = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--no_local_rank", str(WORKER), str(work)]
    result = subprocess.run(command, env=rank_environment(2), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and (work / "pipeline.done").exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return work / "pp"


def assert_follows(run: Path, reference: Path, steps: range) -> None:
    got = {e["step"]: e for e in events(run, "train")}
    want = {e["step"]: e for e in events(reference, "train")}
    assert sorted(got) == list(steps), f"{run.name}: steps {sorted(got)}"
    for step in steps:
        for key in ("loss", "grad_norm"):
            assert got[step][key] == pytest.approx(want[step][key], rel=TOLERANCE), (run.name, step, key)


def test_two_stages_follow_the_local_engine_through_a_checkpoint_and_resume(pipeline, local, work):
    assert_follows(pipeline, local, range(1, 9))
    evals = {e["step"]: e["val_loss"] for e in events(pipeline, "eval")}
    reference = {e["step"]: e["val_loss"] for e in events(local, "eval") if e["step"] <= 8}
    assert evals.keys() == reference.keys() and all(evals[s] == pytest.approx(reference[s], rel=TOLERANCE) for s in evals)
    starts = events(pipeline, "start")
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("step-000004")
    layout = json.loads((pipeline / "checkpoints" / "step-000008" / "deepspeed" / "layout.json").read_text())
    assert layout["pipeline_stages"] == 2 and layout["zero_stage"] == 0
    # the plan's boundaries by parameters: [embedding, block 0] | [block 1, norm, head (the tied embedding)]
    owned = [set(json.loads((work / f"stage-{s}.json").read_text())["owned"]) for s in (0, 1)]
    assert "embed.weight" in owned[0] and "embed.weight" in owned[1]
    assert {n.split(".")[1] for n in owned[0] if n.startswith("blocks.")} == {"0"}
    assert {n.split(".")[1] for n in owned[1] if n.startswith("blocks.")} == {"1"} and "norm.weight" in owned[1]


def test_consolidated_weights_load_as_a_local_run_s(pipeline, local):
    import torch

    import tabula

    ids = torch.arange(16).view(1, 16)
    models = [tabula.load_model(run / "checkpoints" / "step-000008") for run in (pipeline, local)]
    with torch.no_grad():
        torch.testing.assert_close(models[0](ids), models[1](ids), rtol=1e-4, atol=1e-5)


def test_a_pipeline_checkpoint_moves_to_the_local_engine_with_its_optimizer_state(pipeline, local, work):
    from tabula.runtime.reshard import prepare_local_resume

    checkpoint = pipeline / "checkpoints" / "step-000008"
    prepare_local_resume(checkpoint)
    moved = train_local(work, "pp-to-local", 4, resume_from=checkpoint)
    assert_follows(moved, local, range(9, 13))
