"""The Jamba-style hybrid preset (Mamba layers, attention every fourth layer) trains for real in the
local engine, and a resumed run is bit-identical to the run that never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML
from runtime_helpers import one_thread_fixture, train_in

from tabula.schemas.spec import Spec

pytestmark = pytest.mark.slow

PRESET = Path(__file__).resolve().parents[2] / "specs" / "presets" / "jamba-tiny.yaml"

one_thread = one_thread_fixture()


def hybrid_spec() -> Spec:
    """The preset's layer pattern at a test's size: d_model 32, 4 layers (layer 3 attention), 16 tokens
    a sequence, 256 a step, 12 steps, a checkpoint every 4."""
    spec = YAML(typ="safe").load(PRESET.read_text())
    spec["model"].update(d_model=32, n_layers=4, max_seq_len=32)
    spec["model"]["block"]["mlp"]["hidden"] = 64
    spec["model"]["block"]["mixer"].update(d_state=4, chunk=8)
    spec["model"]["layers"][0]["block"]["mlp"]["hidden"] = 64
    spec["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 512, "max_chars": "256k"}
    spec["data"]["sources"]["stdlib"]["max_files"] = 40
    spec["data"]["curriculum"] = [{"seq_len": 16, "mix": {"stdlib": 1.0}}]
    spec["train"].update(batch_tokens=256, budget={"tokens": 3072}, eval={"every_tokens": 1024, "tokens": 512, "sample": {"max_new_tokens": 4}},
                         checkpoint={"every_tokens": 1024, "keep_last": 2}, log={"every_steps": 1})
    spec["track"] = {"aim": {"enabled": False}}
    return Spec.model_validate(spec)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(hybrid_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_hybrid_preset_trains_and_resumes_bit_identically(prepared, tmp_path):
    spec = hybrid_spec()
    assert [block.kind for block in spec.model.layer_blocks] == ["mamba", "mamba", "mamba", "transformer"]
    whole, whole_events = train_in(spec, prepared, tmp_path / "whole")
    assert whole.reason == "finished" and whole.step == 12
    losses = {e["step"]: e["loss"] for e in whole_events if e["kind"] == "train"}
    assert losses[12] < losses[1]
    assert any(e["kind"] == "sample" for e in whole_events)  # generation through the Mamba states and the KV cache

    first, _ = train_in(spec, prepared, tmp_path / "split", max_steps=5)
    assert first.reason == "stopped" and first.checkpoint.name == "step-000005"
    second, events = train_in(spec, prepared, tmp_path / "split", resume_from=first.checkpoint)
    assert second.reason == "finished"
    assert {e["step"]: e["loss"] for e in events if e["kind"] == "train"} == losses  # every step's loss to the last bit
    assert [e["val_loss"] for e in events if e["kind"] == "eval"] == [e["val_loss"] for e in whole_events if e["kind"] == "eval"]
