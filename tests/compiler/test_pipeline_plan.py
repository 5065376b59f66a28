"""Pipeline parallelism's plan, without torch: the spec's refusals, stage boundaries by parameters, FLOPs
or layer index, each stage's parameters and memory, the bubble, and `tabula plan`'s pipeline section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tiny_specs import QUICKSTART

from tabula.compiler import make_plan
from tabula.compiler.estimate import count_parameters
from tabula.compiler.pipeline_plan import balanced_bounds, bubble_fraction, pipeline_layers, plan_pipeline
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text

# 4 blocks, one seq_len, 8 sequences a step in micro-batches of 2: 4 micro-batches on one data rank
YAML = f"""\
extends: {QUICKSTART}
model: {{d_model: 32, n_layers: 4, max_seq_len: 32, block: {{mlp: {{kind: swiglu, hidden: 64}}}}}}
data:
  tokenizer: {{kind: bpe, vocab_size: 320}}
  curriculum: [{{seq_len: 32, mix: {{stdlib: 1.0}}}}]
  sources: {{stdlib: {{kind: python_stdlib, max_files: 5}}}}
train: {{batch_tokens: 256, micro_batch: 2, budget: {{tokens: 4k}}}}
parallel: {{backend: deepspeed, world_size: 2, pipeline: {{stages: 2, micro_batches: 4}}}}
"""


def spec(*overrides: str):
    return load_spec_text(YAML, overrides=list(overrides), base_dir=Path("."))


@pytest.mark.parametrize("overrides, message", [
    (["parallel.backend=fsdp", "parallel.zero.stage=0"], "pipeline parallelism (2 stages) needs backend: deepspeed"),
    (["parallel.zero.stage=2"], "ZeRO stage 2 cannot run with pipeline parallelism"),
    (["parallel.world_size=3"], "2 stages must divide world_size 3"),
    (["parallel.pipeline.partition=[1, 2]"], "2 stages need 1 boundary layer indices"),
    (["parallel.pipeline.stages=3", "parallel.world_size=3", "parallel.pipeline.partition=[3, 2]"], "must increase"),
    (["parallel.pipeline.stages=1"], "pipeline settings need parallel.pipeline.stages above 1"),
])
def test_the_spec_refuses_what_the_pipeline_cannot_run(overrides, message):
    with pytest.raises(SpecErrors) as caught:
        spec(*overrides)
    assert any(message in error.message for error in caught.value.errors), caught.value.errors


def test_micro_batches_must_be_the_plan_s_gradient_accumulation():
    with pytest.raises(SpecErrors) as caught:
        make_plan(spec("parallel.pipeline.micro_batches=2"), vocab_size=320)
    [error] = caught.value.errors
    assert error.path == ("parallel", "pipeline", "micro_batches") and "gradient accumulation steps (4" in error.message


def test_the_pipeline_s_ranks_share_their_sequences():
    plan = make_plan(spec(), vocab_size=320)
    assert plan.world_size == 1 and plan.stages[0].grad_accum == 4


def test_layers_hold_every_parameter_once_and_the_tied_weight_on_both_ends():
    s = spec()
    layers = pipeline_layers(s.model, 320, 32)
    assert [layer.name for layer in layers] == ["embed", "block 0", "block 1", "block 2", "block 3", "norm", "head"]
    assert sum(layer.parameters for layer in layers) == count_parameters(s.model, 320).total + 320 * 32
    assert layers[0].parameters == layers[-1].parameters == 320 * 32
    assert len({layer.parameters for layer in layers[1:5]}) == 1 and layers[5].parameters == 32


def test_balanced_bounds_minimise_the_largest_stage():
    assert balanced_bounds([1, 1, 1, 1], 2) == [0, 2, 4]
    assert balanced_bounds([5, 1, 1, 1, 1, 1], 2) == [0, 1, 6]
    assert balanced_bounds([1, 2, 3, 4, 5], 3) == [0, 3, 4, 5]
    assert balanced_bounds([3, 3, 3], 3) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        balanced_bounds([1, 1], 3)


@pytest.mark.parametrize("partition, bounds", [
    # vocabulary 4096: the embedding and the tied head weigh 12 blocks' parameters each, a block weighs 1/12 of it
    ("parameters", [0, 3, 7]),  # embed, blocks 0-1 | blocks 2-3, norm, head
    ("flops", [0, 6, 7]),  # the embedding is a lookup, the head's 6 x vocab x d FLOPs outweigh the 4 blocks
    ([2], [0, 2, 7]),
])
def test_stage_boundaries_by_parameters_flops_or_layer_index(partition, bounds):
    value = partition if isinstance(partition, str) else str(partition)
    s = spec(f"parallel.pipeline.partition={value}")
    pipe = plan_pipeline(s, 4096, 32, "fp32")
    assert pipe.bounds == bounds
    layers = pipeline_layers(s.model, 4096, 32)
    for stage in pipe.stages:
        part = layers[stage.first:stage.stop]
        assert stage.parameters == sum(layer.parameters for layer in part)
        assert stage.flops_per_token == sum(layer.flops_per_token for layer in part)
        assert stage.state_bytes == 16 * stage.parameters  # fp32 weights, gradients, AdamW's two moments


def test_zero_1_shards_the_optimizer_state_over_the_stage_s_data_ranks():
    s = spec("parallel.world_size=4", "parallel.zero.stage=1")
    pipe = plan_pipeline(s, 320, 32, "fp32")
    assert pipe.stages[0].state_bytes == math.ceil(pipe.stages[0].parameters * (8 + 8 / 2))


def test_a_boundary_past_the_last_layer_is_refused():
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        plan_pipeline(spec("parallel.pipeline.partition=[7]"), 320, 32, "fp32")


def test_bubble_fraction():
    assert bubble_fraction(2, 4) == pytest.approx(1 / 5)
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction(1, 8) == 0
    assert plan_pipeline(spec(), 320, 32, "fp32").bubble == pytest.approx(1 / 5)


def test_tabula_plan_shows_each_stage_and_the_bubble():
    from tabula.commands.plan import _pipeline_json, _pipeline_lines

    s = spec()
    plan = make_plan(s, vocab_size=320)
    lines = _pipeline_lines(s, plan)
    assert "bubble 20.0%" in lines[1] and "balanced by parameters" in lines[1]
    assert "embed .. block 1" in lines[3] and "block 2 .. head" in lines[4]
    shown = _pipeline_json(s, plan)
    assert shown["bounds"] == [0, 3, 7] and shown["bubble"] == pytest.approx(0.2)


def test_document_masking_is_refused_with_a_pipeline():
    with pytest.raises(SpecErrors) as caught:
        make_plan(spec("data.packing.document_masking=true"), vocab_size=320)
    assert [e.path for e in caught.value.errors] == [("data", "packing", "document_masking")]
