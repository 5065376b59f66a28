"""One function builds the training model for every engine: materialised with the seed, activation
checkpointing and compile applied as the spec says, on the local engine and on a DeepSpeed rank alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from runtime_helpers import tiny_spec
from tabula.compiler import make_plan
from tabula.compiler.compile import is_compiled
from tabula.runtime.build import build_local_engine, build_training_model


def test_the_training_model_follows_the_spec():
    spec = tiny_spec()
    compiled = spec.model_copy(update={
        "model": spec.model.model_copy(update={"compile": spec.model.compile.model_copy(update={"enabled": True})}),
        "parallel": spec.parallel.model_copy(update={"activation_checkpointing": "full"}),
    })
    plan = make_plan(compiled, vocab_size=512)
    model = build_training_model(compiled, plan, torch.device("cpu"))
    assert all(is_compiled(block) for block in model.blocks)  # compiled at the first forward
    assert all(block.checkpoint_activations for block in model.blocks)
    plain = build_training_model(spec, make_plan(spec, vocab_size=512), torch.device("cpu"))
    assert not any(is_compiled(block) or block.checkpoint_activations for block in plain.blocks)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):  # the seed's weights either way
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_local_engine_trains_the_built_model():
    spec = tiny_spec()
    engine = build_local_engine(spec, make_plan(spec, vocab_size=512), torch.device("cpu"))
    assert {p.device.type for p in engine.model.parameters()} == {"cpu"} and engine.model.training
    assert engine.optimizer.param_groups and engine.precision == "fp32"


# One DeepSpeed rank (gloo, world size 1) builds its engine exactly as runtime/rank.py does and takes a
# step: the blocks must be compiled (model.compile.enabled=true was once ignored on DeepSpeed ranks).
RANK = """\
import json, sys
import torch
from torch._dynamo.utils import counters
from tabula.compiler import make_plan
from tabula.compiler.compile import is_compiled
from tabula.runtime.build import build_deepspeed_engine
from tabula.runtime.deepspeed_engine import init_distributed
from tabula.schemas.loader import load_spec

init_distributed(timeout_minutes=2)
spec = load_spec(sys.argv[1], overrides=["parallel.backend=deepspeed", "parallel.zero.stage=1",
                                         "model.compile.enabled=true"])
plan = make_plan(spec, world_size=1, vocab_size=512)
engine, parameters = build_deepspeed_engine(spec, plan)
stage = plan.stages[0]
ids = torch.randint(0, 512, (stage.micro_batch, stage.seq_len), generator=torch.Generator().manual_seed(0))
loss = engine.forward_backward(ids, ids.roll(-1, 1), None, 1)
norm = engine.step(1e-3)
print(json.dumps({"compiled": [is_compiled(block) for block in engine.model.blocks], "parameters": parameters,
                  "graphs": counters["stats"]["unique_graphs"], "loss": float(loss), "norm": float(norm)}))
"""


@pytest.mark.multiproc
@pytest.mark.slow
def test_a_deepspeed_rank_compiles_its_blocks(tmp_path):
    from tiny_specs import tiny_spec_yaml

    from tabula.runtime.launch import free_port, rank_environment

    (tmp_path / "tiny.yaml").write_text(tiny_spec_yaml())
    env = {**rank_environment(1), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = subprocess.run([sys.executable, "-c", RANK, str(tmp_path / "tiny.yaml")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)  # a cold ~/.cache/torch_extensions adds ~3 min
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["compiled"] == [True, True]  # both blocks of the tiny model
    assert report["graphs"] >= 1  # and dynamo traced them in the step
    assert report["parameters"] > 0 and report["loss"] == report["loss"] and report["norm"] == report["norm"]
    assert os.path.isdir(tmp_path / "inductor")  # inductor compiled code for this rank
