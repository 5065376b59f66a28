"""A spec whose weights come from a pretrained model (model.init: {kind: from}): the one function that
builds the training model loads them, on the local engine and on a DeepSpeed rank alike; a run's
prologue refuses a source that is missing or does not fit before it creates the run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hf_checkpoints import VOCAB, checkpoint
from tabula.cli import main
from tabula.compiler import make_plan
from tabula.runtime.build import build_training_model
from tabula.schemas.loader import load_spec

transformers = pytest.importorskip("transformers")

# The written spec's placeholder source (data/*.jsonl) filled with a small file; aim off.
OVERRIDES = ["track.aim.enabled=false", "data.validation.fraction=0.1"]


@pytest.fixture
def imported(tmp_path, capsys):
    """(the transformers model, the spec file `tabula import` wrote for it, with data at its placeholder)."""
    hf = checkpoint(tmp_path / "hf", "llama", num_key_value_heads=2)
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "llama.yaml")]) == 0
    (tmp_path / "data").mkdir()
    words = torch.randint(0, VOCAB - 2, (60, 40), generator=torch.Generator().manual_seed(5)).tolist()
    (tmp_path / "data" / "records.jsonl").write_text("".join(json.dumps({"text": " ".join(f"w{i}" for i in row)}) + "\n" for row in words))
    capsys.readouterr()
    return hf, tmp_path / "llama.yaml"


IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(IDS)


def hf_logits(hf):
    with torch.no_grad():
        return hf(IDS).logits


def test_the_training_model_holds_the_pretrained_weights(imported):
    hf, spec_file = imported
    spec = load_spec(spec_file, overrides=[*OVERRIDES, "parallel.activation_checkpointing=full"])
    model = build_training_model(spec, make_plan(spec, vocab_size=VOCAB), torch.device("cpu")).eval()
    assert all(block.checkpoint_activations for block in model.blocks)
    torch.testing.assert_close(logits(model), hf_logits(hf), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_run_fine_tunes_the_pretrained_model_and_refuses_a_missing_source_first(imported, tmp_path, tabula_cache, capsys):
    import tabula

    hf, spec_file = imported
    refused = tmp_path / "runs" / "refused"
    assert main(["run", str(spec_file), *OVERRIDES, "model.init.path=nowhere", "--headless", "--run-dir", str(refused)]) == 2
    err = capsys.readouterr().err
    assert f"model.init.path: {tmp_path / 'nowhere'}: no such folder" in err and "Traceback" not in err
    assert not refused.exists()  # refused in the prologue, before the run folder
    run = tmp_path / "runs" / "tuned"
    assert main(["run", str(spec_file), *OVERRIDES, "--headless", "--max-steps", "2", "--run-dir", str(run)]) == 0
    tuned = tabula.load_model(run)
    # Two steps at lr 2e-5 move the pretrained model a little; a model drawn from the seed is far away.
    difference = (logits(tuned) - hf_logits(hf)).abs().max()
    assert 0 < difference < 1e-2


# One DeepSpeed rank (gloo, world size 1, ZeRO-3: the weights are partitioned after they are loaded)
# builds its engine as runtime/rank.py does: its loss on a batch is the transformers model's.
RANK = """\
import json, sys
import torch
from tabula.compiler import make_plan
from tabula.runtime.build import build_deepspeed_engine
from tabula.runtime.deepspeed_engine import init_distributed
from tabula.schemas.loader import load_spec

init_distributed(timeout_minutes=2)
spec = load_spec(sys.argv[1], overrides=["parallel.backend=deepspeed", "parallel.zero.stage=3", "track.aim.enabled=false"])
engine, parameters = build_deepspeed_engine(spec, make_plan(spec, world_size=1, vocab_size=int(sys.argv[2])))
ids = torch.randint(0, int(sys.argv[2]), (2, 24), generator=torch.Generator().manual_seed(0))
print(json.dumps({"loss": float(engine.evaluate(ids[:, :-1], ids[:, 1:], None)), "parameters": parameters}))
"""


@pytest.mark.multiproc
@pytest.mark.slow
def test_a_deepspeed_rank_loads_the_pretrained_weights(imported, tmp_path):
    from tabula.runtime.launch import free_port, rank_environment

    hf, spec_file = imported
    env = {**rank_environment(1), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-c", RANK, str(spec_file), str(VOCAB)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)  # a cold ~/.cache/torch_extensions adds ~3 min
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids[:, :-1], labels=None).logits
        reference = torch.nn.functional.cross_entropy(expected.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert report["loss"] == pytest.approx(float(reference), abs=1e-4)
    assert report["parameters"] == sum(p.numel() for p in hf.parameters())
