"""Supervised fine-tuning through the train loop on the chat file tabula ships: the loss on the
assistant's tokens falls, and a resumed run repeats every step's loss to the last bit."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import one_thread_fixture, train_in
from ruamel.yaml import YAML


pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "specs" / "finetune-chat.yaml"


one_thread = one_thread_fixture()


def tiny_chat_spec():
    from tabula.schemas.spec import Spec

    raw = YAML(typ="safe").load(SPEC.read_text())
    raw["model"].update(d_model=64, n_layers=2, max_seq_len=64)
    raw["model"]["block"]["mlp"]["hidden"] = 128
    raw["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 512}
    raw["data"]["sources"]["chat"]["paths"] = [str(SPEC.parent / "data" / "chat-sample.jsonl")]
    raw["data"]["chat"]["max_tokens"] = 64
    raw["data"]["curriculum"] = [{"seq_len": 64, "mix": {"chat": 1.0}}]
    raw["train"]["optimizer"]["lr"] = 3.0e-3
    raw["train"].update(batch_tokens=512, budget={"tokens": "12k"}, log={"every_steps": 1},
                        eval={"every_tokens": "4k", "tokens": 1024, "sample": {"max_new_tokens": 4}},
                        checkpoint={"every_tokens": "4k", "keep_last": 2})
    raw["track"] = {"aim": {"enabled": False}}
    return Spec.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(tiny_chat_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


run = train_in


def losses(events, kind="train", field="loss"):
    return {e["step"]: e[field] for e in events if e["kind"] == kind}


def test_sft_loss_falls_and_resume_is_bit_identical(prepared, tmp_path):
    spec = tiny_chat_spec()
    whole, whole_events = run(spec, prepared, tmp_path / "whole")
    assert whole.reason == "finished" and whole.step == 24
    train_losses = losses(whole_events)
    assert sum(train_losses[s] for s in (22, 23, 24)) < 0.85 * sum(train_losses[s] for s in (1, 2, 3))
    evals = list(losses(whole_events, "eval", "val_loss").values())
    assert evals[-1] < evals[0]
    first, _ = run(spec, prepared, tmp_path / "split", max_steps=10)
    assert first.reason == "stopped"
    second, events = run(spec, prepared, tmp_path / "split", resume_from=first.checkpoint)
    assert second.reason == "finished" and losses(events) == train_losses
    assert list(losses(events, "eval", "val_loss").values()) == evals
