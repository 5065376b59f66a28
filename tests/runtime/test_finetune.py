"""Fine-tuning in the train loop on the CPU: checkpoints hold the trained parameters alone, resume is bit
identical, a checkpoint over another base is refused, the start event says what trains."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import tabula
from runtime_helpers import one_thread_fixture, tiny_spec, tiny_spec_dict
from tabula.compiler import make_plan
from tabula.runtime.build import build_local_engine
from tabula.runtime.checkpoint import finetune_record
from tabula.runtime.events import read_events
from tabula.runtime.loop import train
from tabula.runtime.optimizers import param_groups
from tabula.runtime.rundir import RunDir

pytestmark = pytest.mark.slow

LORA = {"kind": "lora", "rank": 4, "targets": ["attn.*", "mlp.up"]}
PREFIX = {"kind": "prefix_tuning", "virtual_tokens": 4}


one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(tiny_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


def _spec(finetune, **train):
    from tabula.schemas.spec import Spec

    raw = tiny_spec_dict(finetune=finetune, **train)
    raw["model"]["max_seq_len"] += finetune.get("virtual_tokens", 0)  # virtual positions come before every sequence
    return Spec.model_validate(raw)


def _run(spec, prepared, folder, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")
    run = RunDir(folder)
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu")
    engine = build_local_engine(spec, plan, torch.device("cpu"))
    outcome = train(spec, plan, engine, run, prepared, spec_hash="test", **kwargs)
    return outcome, read_events(run.events), engine


def _losses(events):
    return {e["step"]: e["loss"] for e in events if e["kind"] == "train"}


@pytest.mark.parametrize("finetune", [LORA, PREFIX], ids=["lora", "prefix_tuning"])
def test_resume_is_bit_identical_and_checkpoints_hold_the_trained_parameters(prepared, tmp_path, finetune):
    spec = _spec(finetune)
    whole, whole_events, engine = _run(spec, prepared, tmp_path / "whole")
    assert whole.reason == "finished" and whole.step == 24
    first, _, _ = _run(spec, prepared, tmp_path / "split", max_steps=9)
    second, events, _ = _run(spec, prepared, tmp_path / "split", resume_from=first.checkpoint)
    assert second.reason == "finished"
    assert _losses(events) == _losses(whole_events)  # every step's loss to the last bit
    assert [e["val_loss"] for e in events if e["kind"] == "eval"] == [e["val_loss"] for e in whole_events if e["kind"] == "eval"]
    trained = {name for name, p in engine.model.named_parameters() if p.requires_grad}
    weights = whole.checkpoint / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        assert set(handle.keys()) == trained  # no frozen base weight in any checkpoint
    assert finetune_record(weights)["method"] == finetune["kind"]
    start = next(e for e in whole_events if e["kind"] == "start")
    assert start["finetune"] == finetune["kind"] and start["trainable_parameters"] == sum(
        engine.model.get_parameter(name).numel() for name in trained)
    assert start["parameters"] == sum(p.numel() for p in engine.model.parameters()) > start["trainable_parameters"]


def test_the_optimizer_holds_the_trainable_parameters_alone(prepared):
    spec = _spec(LORA)
    engine = build_local_engine(spec, make_plan(spec, vocab_size=prepared.vocab_size), torch.device("cpu"))
    held = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in engine.model.parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in param_groups(engine.model, 0.1)) == len(held)


def test_a_checkpoint_over_another_base_is_refused(prepared, tmp_path):
    first, _, _ = _run(_spec(LORA), prepared, tmp_path / "run", max_steps=2)
    other = _spec(LORA).model_copy(update={"seed": 99})  # another seed draws another base
    outcome, events, _ = _run(other, prepared, tmp_path / "run", resume_from=first.checkpoint)
    assert outcome.reason == "failed"
    assert "was trained over other base weights than this spec builds" in outcome.error
    dora = _spec({**LORA, "kind": "dora"})
    outcome, _, _ = _run(dora, prepared, tmp_path / "run", resume_from=first.checkpoint)
    assert outcome.reason == "failed" and "holds lora weights over a frozen base, but the model is dora" in outcome.error


def test_load_model_merges_the_adapters(prepared, tmp_path):
    from tabula.runtime.rundir import create_run_dir
    from tabula.schemas.canonical import canonical_yaml

    spec = _spec(LORA)
    run = create_run_dir(tmp_path / "run", spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                         tokenizer_json=None)
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu")
    engine = build_local_engine(spec, plan, torch.device("cpu"))
    train(spec, plan, engine, run, prepared, spec_hash="test", max_steps=3)
    loaded = tabula.load_model(run.path)
    assert loaded.finetune is None and not any("lora" in name for name, _ in loaded.named_parameters())
    ids = torch.randint(0, prepared.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), engine.model.eval()(ids), rtol=1e-5, atol=1e-5)


ATTENTION = {
    "mha": {"kind": "mha", "n_heads": 4},
    "mqa": {"kind": "mqa", "n_heads": 4, "window": 16},
    "mla": {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 16, "rope_head_dim": 8, "latent_norm": True},
}


@pytest.mark.parametrize("kind", list(ATTENTION))
def test_the_local_engine_trains_lora_on_every_attention_kind(prepared, tmp_path, kind):
    from tabula.schemas.spec import Spec

    targets = ["q_down", "q_up", "kv_down", "kv_up", "o_proj"] if kind == "mla" else ["attn.*", "mlp.*"]
    raw = tiny_spec_dict(finetune={"kind": "lora", "rank": 4, "targets": targets})
    raw["model"]["block"]["attention"] = ATTENTION[kind]
    spec = Spec.model_validate(raw)
    outcome, events, engine = _run(spec, prepared, tmp_path / kind, max_steps=3)
    assert outcome.reason == "stopped" and outcome.step == 3
    with safe_open(str(outcome.checkpoint / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert all(".lora_A." in n or ".lora_B." in n for n in names)  # the adapters alone
    if kind == "mla":  # every projection named, each adapted
        assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in names} == set(targets)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events if e["kind"] == "train")
