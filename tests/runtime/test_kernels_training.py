"""A few training steps, an evaluation and a sample with model.kernels' chunked cross-entropy and the
flex attention backend (global tokens on a window) give the numbers of the standard loss and the
dense mask: the loop needs no logits from a training forward, and evaluation (no gradients, so
FlexAttention on the CPU) agrees with the dense-mask path."""

from __future__ import annotations

import pytest
from runtime_helpers import one_thread_fixture, tiny_spec, train_in

one_thread = one_thread_fixture()

ATTENTION = {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 8, "sparse": {"global_tokens": 2}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(tiny_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


def _spec(**model):
    from tabula.schemas.spec import Spec
    from runtime_helpers import tiny_spec_dict

    raw = tiny_spec_dict(eval={"every_tokens": 1024, "tokens": 512, "sample": {"max_new_tokens": 4}})
    raw["model"]["block"]["attention"] = {**ATTENTION, **model.pop("attention", {})}
    raw["model"].update(model)
    return Spec.model_validate(raw)


def test_chunked_loss_and_flex_attention_train_and_evaluate_as_the_reference(prepared, tmp_path):
    reference = _spec()
    fused = _spec(attention={"backend": "flex"}, kernels={"cross_entropy": "chunked", "chunk_tokens": 100})
    results = [train_in(spec, prepared, tmp_path / name, max_steps=3) for name, spec in (("ref", reference), ("fused", fused))]
    (ref_outcome, ref_events), (outcome, events) = results
    assert outcome.reason == ref_outcome.reason == "stopped"
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        got = [e[key] for e in events if e["kind"] == kind]
        expected = [e[key] for e in ref_events if e["kind"] == kind]
        assert got and got == pytest.approx(expected, rel=1e-5, abs=1e-6), kind
