"""The Mixtral-style and DeepSeek-V3-style presets, shrunk, train a few steps on the CPU: the loss is
finite, routing events report each MoE layer's expert load and balancing loss, and DeepSeek-V3's
balancing bias moves (and is saved with the weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import one_thread_fixture, tiny_spec_dict, train_in

from tabula import load_spec
from tabula.schemas.spec import Spec

PRESETS = Path(__file__).resolve().parents[2] / "specs" / "presets"
SHRINK = ["model.d_model=64", "model.n_layers=2", "model.max_seq_len=64", "data.curriculum.0.seq_len=64", "model.block.mlp.hidden=32", "model.block.mlp.n_experts=4"]

one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(Spec.model_validate(tiny_spec_dict()), cache_dir=tmp_path_factory.mktemp("cache"))


def preset(name: str) -> Spec:
    """The preset's model, shrunk, on the tiny runtime data and schedule."""
    model = load_spec(PRESETS / f"{name}.yaml", overrides=SHRINK).model.model_dump(mode="json")
    model["vocab_size"] = "auto"
    return Spec.model_validate(tiny_spec_dict(budget={"tokens": 2048}) | {"model": model})


@pytest.mark.parametrize("name", ["mixtral-tiny", "deepseek-v3-tiny"])
def test_the_moe_presets_train_and_report_their_routing(name, prepared, tmp_path):
    import torch

    from tabula.runtime.checkpoint import list_checkpoints

    spec = preset(name)
    outcome, events = train_in(spec, prepared, tmp_path / "run", max_steps=3)
    assert outcome.reason in ("finished", "stopped") and outcome.step == 3
    losses = [e["loss"] for e in events if e["kind"] == "train"]
    assert losses and all(loss is not None and loss == loss for loss in losses)
    routing = [e for e in events if e["kind"] == "routing"]
    moe_layers = 1 if name == "deepseek-v3-tiny" else 2  # deepseek's layer 0 is dense
    assert len(routing) == len(losses) and all(len(e["load"]) == moe_layers for e in routing)
    assert all(abs(sum(row) - 1) < 1e-3 and len(row) == 4 for e in routing for row in e["load"])
    assert all(e["imbalance"] >= 1 and e["balance_loss"] > 0 for e in routing)
    if name == "deepseek-v3-tiny":
        from safetensors.torch import load_file

        weights = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
        bias = weights["blocks.1.mlp.expert_bias"]
        assert bias.abs().sum() > 0 and torch.allclose(bias.abs(), torch.full((4,), bias.abs()[0].item()), atol=3e-3 + 1e-6)
