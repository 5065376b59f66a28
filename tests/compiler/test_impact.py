"""Diff impact: cost before -> after, and which changes a run can resume across."""

from __future__ import annotations

import pytest
from plan_specs import spec

from tabula.compiler.estimate import count_parameters
from tabula.compiler.impact import annotate, changed_paths, resume_compatibility

RESUMABLE = {
    "schedule": {"train.schedule": {"kind": "wsd", "warmup": "1%"}},
    "lr": {"train.optimizer": {"kind": "adamw", "lr": 3e-4, "weight_decay": 0.1}},
    "budget": {"train.budget": {"tokens": "1M"}},
    "mixture and curriculum": {"data.curriculum": [{"until_tokens": "16k", "seq_len": 64, "mix": {"code": 1}}, {"mix": {"prose": 1}}]},
    "batch": {"train.batch_tokens": 8192, "train.micro_batch": 4},
    "intervals": {"train.eval": {"every_tokens": "16k"}, "train.checkpoint": {"every_tokens": "32k"}},
    "track": {"track.tags": ["again"]},
    "dropout, compile, init": {"model.dropout": 0.1, "model.compile": {"enabled": False}, "model.init": {"std": 0.01}},
    "mlp dropout, init scheme": {"model.block.mlp": {"kind": "swiglu", "hidden": 160, "dropout": 0.1}, "model.init": {"kind": "tabulaprima"}},
    "longer context with rope": {"model.max_seq_len": 256},
    "sources": {"data.sources.web": {"kind": "python_stdlib", "max_files": 3}},
    "parallelism": {"parallel": {"backend": "deepspeed", "world_size": 2, "zero": {"stage": 2}}},
}

# (A's changes, B's changes, the path warned about): the weights keep every shape
SAME_SHAPES = {
    "rope theta": ({}, {"model.position": {"kind": "rope", "theta": 500000}}, "model.position.theta"),
    "sliding window": ({}, {"model.block.attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 32}}, "model.block.attention.window"),
    # gqa with as many key/value heads as query heads has mha's weights
    "gqa as mha": ({"model.block.attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 4}},
                   {"model.block.attention": {"kind": "mha", "n_heads": 4}}, "model.block.attention.kind"),
}

BREAKING = {
    "width": ({"model.d_model": 96}, "model.d_model"),
    "attention kind": ({"model.block.attention": {"kind": "mha", "n_heads": 4}}, "model.block.attention.kind"),
    "norm with a bias": ({"model.block.norm": {"kind": "layernorm"}}, "model.block.norm.kind"),
    "qk norm": ({"model.block.attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "qk_norm": True}}, "model.block.attention.qk_norm"),
    "vocabulary": ({"model.vocab_size": 1024}, "model.vocab_size"),
    "tokenizer": ({"data.tokenizer": {"kind": "unigram", "vocab_size": 512}}, "data.tokenizer.kind"),
    "optimizer kind": ({"train.optimizer": {"kind": "lion", "lr": 1e-4}}, "train.optimizer.kind"),
    "learned positions and context": (
        {"model.position": {"kind": "learned"}},
        "model.position.kind",
    ),
}


@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_changes_a_run_can_resume_across(name):
    ok, reasons = resume_compatibility(spec(), spec(**RESUMABLE[name]))
    assert ok and reasons == []
    assert annotate(spec(), spec(**RESUMABLE[name])).warnings == ()  # and silently: nothing computes differently


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_changes_that_break_resuming_name_their_path(name):
    changes, path = BREAKING[name]
    ok, reasons = resume_compatibility(spec(), spec(**changes))
    assert not ok
    assert any(path in reason for reason in reasons), reasons


@pytest.mark.parametrize("name", sorted(SAME_SHAPES))
def test_same_shape_model_changes_resume_with_a_warning(name):
    changes_a, changes_b, path = SAME_SHAPES[name]
    a, b = spec(**changes_a), spec(**changes_b)
    ok, reasons = resume_compatibility(a, b)
    assert ok and reasons == []
    impact = annotate(a, b)
    assert any(warning.startswith(path) and "compute" in warning for warning in impact.warnings)
    assert "but:" in impact.lines()[4]


def test_context_change_breaks_resuming_with_learned_positions():
    learned = {"model.position": {"kind": "learned"}}
    ok, reasons = resume_compatibility(spec(**learned), spec(**learned, **{"model.max_seq_len": 256}))
    assert not ok and "model.max_seq_len" in reasons[0]


def test_annotate_reports_costs_before_and_after():
    a, b = spec(), spec(**{"model.n_layers": 4, "train.budget": {"tokens": "128k"}})
    impact = annotate(a, b)
    data = impact.as_dict()
    assert data["parameters"] == {"before": count_parameters(a.model, 512).total, "after": count_parameters(b.model, 512).total}
    assert data["total_steps"] == {"before": 16, "after": 32}
    assert data["flops_per_token"]["after"] > data["flops_per_token"]["before"]
    assert data["memory_per_rank"]["after"] > data["memory_per_rank"]["before"]
    assert data["resume"]["compatible"] is False
    assert data["resume"]["breaking_paths"] == ["model.n_layers"]
    lines = impact.lines()
    assert any(line.startswith("total steps") and "16 -> 32 (+100.0%)" in line for line in lines)
    assert any("cannot resume" in line for line in lines)


def test_annotate_unchanged_costs_and_resumable():
    impact = annotate(spec(), spec(**{"train.optimizer": {"kind": "adamw", "lr": 2e-3}}))
    assert impact.resumable
    assert any(line.startswith("parameters") and "unchanged" in line for line in impact.lines())
    assert impact.lines()[-1].startswith("resume") and "can resume" in impact.lines()[-1]


def test_annotate_a_spec_that_cannot_be_planned_still_annotates():
    impact = annotate(spec(), spec(**{"train.batch_tokens": 4000}))
    data = impact.as_dict()
    assert data["total_steps"]["after"] is None
    assert data["total_steps"]["before"] == 16
    assert any("B cannot be planned" in note for note in data["notes"])


def test_changed_paths_lists_added_removed_and_changed():
    a = spec()
    b = spec(**{"model.block.attention": {"kind": "mha", "n_heads": 4}, "train.micro_batch": 8})
    paths = changed_paths(a, b)
    assert "model.block.attention.kind" in paths
    assert "model.block.attention.n_kv_heads" in paths  # removed
    assert "train.micro_batch" in paths
    assert changed_paths(a, a) == []


def test_annotate_fills_the_impact_of_the_diffs_changes():
    from tabula.schemas.diff import diff_specs

    a = spec()
    b = spec(**{"model.d_model": 96, "train.budget": {"tokens": "128k"}})
    changes = diff_specs(a, b)
    impact = annotate(a, b, changes)
    by_path = {change.path: change.impact for change in changes}
    assert by_path["model.d_model"].startswith("breaks resuming")
    assert by_path["train.budget.tokens"] is None
    assert impact.resume_breaking == ("model.d_model",)


def test_a_compute_only_change_beside_a_reshaping_one_is_not_blamed():
    ok, reasons = resume_compatibility(spec(), spec(**{"model.d_model": 96, "model.position": {"kind": "rope", "theta": 500000}}))
    assert not ok
    assert [reason.split()[0] for reason in reasons] == ["model.d_model"]


def test_summary_says_each_reason_once_with_its_paths():
    from tabula.compiler.impact import RESHAPES
    from tabula.schemas.diff import diff_specs

    a, b = spec(), spec(**{"model.d_model": 96, "model.n_layers": 4, "model.position": {"kind": "rope", "theta": 500000}})
    changes = diff_specs(a, b)
    lines = annotate(a, b, changes).lines()
    resume = lines.index("resume             a run of A cannot resume under B:")
    assert lines[resume + 1:] == [f"  {RESHAPES}: model.d_model, model.n_layers"]
    by_path = {change.path: change.impact for change in changes}
    assert by_path["model.d_model"] == by_path["model.n_layers"] == f"breaks resuming: {RESHAPES}"
    assert by_path["model.position.theta"] == "resumable, but the weights compute differently (the loss may jump)"


def test_a_fine_tuning_change_that_changes_what_trains_breaks_resuming():
    import copy

    from compiler_specs import BASE

    from tabula.schemas.spec import Spec

    def with_finetune(finetune):
        raw = copy.deepcopy(BASE)
        raw["train"]["finetune"] = finetune
        return Spec.model_validate(raw)

    lora = with_finetune({"kind": "lora", "rank": 4})
    ok, reasons = resume_compatibility(lora, with_finetune({"kind": "lora", "rank": 8}))
    assert not ok and reasons == ["train.finetune.rank changes what trains, so the checkpoint's trained parameters and optimizer state do not fit"]
    assert not resume_compatibility(lora, with_finetune({"kind": "dora", "rank": 4}))[0]
    assert not resume_compatibility(with_finetune(None), lora)[0]
    assert resume_compatibility(lora, with_finetune({"kind": "lora", "rank": 4, "alpha": 32, "dropout": 0.1}))[0]
