"""make_plan: stages, steps, micro-batches, budgets and the errors of combinations that cannot run."""

from __future__ import annotations

import math

import pytest
from plan_specs import spec

from tabula.compiler.estimate import count_parameters
from tabula.compiler.plan import make_plan

STAGES = [
    {"until_tokens": "16k", "seq_len": 32, "mix": {"code": 3, "prose": 1}},
    {"until_tokens": "40k", "seq_len": 64},
    {"mix": {"prose": 1.0}},
]


def spec_errors(call):
    """The SpecError list a call raises (SpecErrors from the spec language)."""
    from tabula.schemas.errors import SpecErrors

    with pytest.raises(SpecErrors) as raised:
        call()
    return raised.value.errors


def test_first_stage_defaults_to_max_seq_len_and_equal_mix():
    plan = make_plan(spec())
    (stage,) = plan.stages
    assert stage.seq_len == 128
    assert stage.mix == {"code": 0.5, "prose": 0.5}
    assert (stage.start_tokens, stage.end_tokens) == (0, 65536)
    assert stage.sequences_per_step == 4096 // 128
    assert plan.total_steps == stage.steps == 16


def test_stages_carry_over_seq_len_and_mix_and_the_last_runs_to_the_budget():
    plan = make_plan(spec(**{"data.curriculum": STAGES}))
    assert [s.seq_len for s in plan.stages] == [32, 64, 64]
    assert plan.stages[0].mix == {"code": 0.75, "prose": 0.25}
    assert plan.stages[1].mix == {"code": 0.75, "prose": 0.25}
    assert plan.stages[2].mix == {"prose": 1.0}
    assert [(s.start_tokens, s.end_tokens) for s in plan.stages] == [(0, 16384), (16384, 40960), (40960, 65536)]
    assert [s.steps for s in plan.stages] == [4, 6, 6]
    assert plan.total_steps == 16 == 65536 // 4096
    assert [s.sequences_per_step for s in plan.stages] == [128, 64, 64]


def test_steps_follow_token_boundaries_that_are_not_multiples_of_the_batch():
    stages = [{"until_tokens": 10000, "seq_len": 32}, {"seq_len": 64}]
    plan = make_plan(spec(**{"data.curriculum": stages, "train.budget": {"tokens": 30000}}))
    # steps start after 0, 4096, 8192 (stage 0), 12288 ... 28672 (stage 1)
    assert [s.steps for s in plan.stages] == [3, 5]
    assert plan.total_steps == math.ceil(30000 / 4096)
    assert all(plan.stage_at(step * 4096).index == (0 if step < 3 else 1) for step in range(plan.total_steps))
    assert plan.total_tokens == 8 * 4096


def test_stages_beyond_the_budget_are_dropped_with_a_note():
    stages = [{"until_tokens": "32k", "seq_len": 32}, {"until_tokens": "128k", "seq_len": 64}, {"seq_len": 128}]
    plan = make_plan(spec(**{"data.curriculum": stages, "train.budget": {"tokens": "48k"}}))
    assert [s.index for s in plan.stages] == [0, 1]
    assert plan.stages[-1].end_tokens == 48 * 1024
    assert any("stage 2" in note and "dropped" in note for note in plan.notes)
    assert any("stage 1" in note and "cut" in note for note in plan.notes)


def test_micro_batch_given_sets_accumulation():
    plan = make_plan(spec(**{"train.micro_batch": 4}))
    (stage,) = plan.stages
    assert (stage.micro_batch, stage.grad_accum) == (4, 8)


def test_auto_micro_batch_divides_the_sequences_and_fits_the_memory():
    roomy = make_plan(spec())
    assert (roomy.stages[0].micro_batch, roomy.stages[0].grad_accum) == (32, 1)
    # room for the model states and a few sequences' activations only
    tight = make_plan(spec(), device_memory=40 * 2**20)
    stage = tight.stages[0]
    assert stage.micro_batch < 32 and 32 % stage.micro_batch == 0
    assert stage.micro_batch * stage.grad_accum == 32
    bigger = make_plan(spec(), device_memory=80 * 2**20).stages[0].micro_batch
    assert bigger > stage.micro_batch


def test_world_size_splits_sequences_per_rank():
    plan = make_plan(spec(**{"parallel": {"backend": "deepspeed", "world_size": 4}, "train.micro_batch": 2}))
    assert plan.world_size == 4
    assert (plan.stages[0].micro_batch, plan.stages[0].grad_accum) == (2, 4)
    assert make_plan(spec(), world_size=2).world_size == 2


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert make_plan(spec(), device_type="cuda").precision == "bf16"
    assert make_plan(spec(), device_type="cpu").precision == "fp32"
    assert make_plan(spec(**{"parallel.precision": "fp16"}), device_type="cuda").precision == "fp16"


def test_budget_in_tokens_per_parameter():
    s = spec(**{"train.budget": {"tokens_per_param": 2.5}})
    n = count_parameters(s.model, 512).total
    plan = make_plan(s)
    assert plan.budget_tokens == math.ceil(2.5 * n)
    assert plan.total_steps == math.ceil(plan.budget_tokens / 4096)


def test_warmup_and_intervals():
    s = spec(**{"train.schedule": {"kind": "cosine", "warmup": "10%"}, "train.eval": {"every_tokens": "8k"}})
    plan = make_plan(s)
    assert plan.warmup_tokens == round(0.1 * 65536)
    assert plan.warmup_steps == math.ceil(6554 / 4096)
    assert plan.eval_every_tokens == 8192
    assert plan.checkpoint_every_tokens is None


def test_vocab_size_auto_takes_the_tokenizers_and_a_number_in_the_spec_wins():
    auto = spec(**{"model.vocab_size": "auto"})
    assert make_plan(auto, vocab_size=300).vocab_size == 300
    assert make_plan(auto).vocab_size == 512  # the bpe tokenizer's size, known from the spec
    assert make_plan(spec(**{"model.vocab_size": 576}), vocab_size=500).vocab_size == 576  # padded past the tokenizer's


def test_a_model_vocabulary_smaller_than_the_tokenizers_is_an_error():
    (error,) = spec_errors(lambda: make_plan(spec(), vocab_size=600))
    assert error.path == ("model", "vocab_size")
    assert error.expected == "at least 600"


def test_batch_not_divisible_by_seq_len_names_batch_tokens_once():
    stages = [{"until_tokens": "16k", "seq_len": 32}, {"until_tokens": "32k", "seq_len": 96}, {"seq_len": 80}]
    (error,) = spec_errors(lambda: make_plan(spec(**{"data.curriculum": stages})))
    assert error.path == ("train", "batch_tokens")
    assert "batch_tokens (4096)" in error.message
    assert "80 x 1 = 80 and 96 x 1 = 96" in error.message
    assert error.expected == "a multiple of 480"  # lcm(32, 96, 80)
    assert "4320" in error.message  # the nearest batch that fits every stage (9 x 480)


def test_batch_not_divisible_by_world_size_names_batch_tokens():
    s = spec(**{"parallel": {"backend": "deepspeed", "world_size": 3}})
    (error,) = spec_errors(lambda: make_plan(s))
    assert error.path == ("train", "batch_tokens")
    assert "128 x 3 = 384" in error.message


def test_micro_batch_that_does_not_divide_names_micro_batch():
    (error,) = spec_errors(lambda: make_plan(spec(**{"train.micro_batch": 5})))
    assert error.path == ("train", "micro_batch")
    assert error.expected == "a divisor of 32"


def test_unknown_vocabulary_is_an_error_not_a_guess():
    s = spec(**{"model.vocab_size": "auto", "data.tokenizer": {"kind": "file", "path": "tok.json"}})
    (error,) = spec_errors(lambda: make_plan(s))
    assert error.path == ("model", "vocab_size")


def test_a_sequence_that_does_not_fit_says_so():
    plan = make_plan(spec(), device_memory=4 * 2**20)  # 3.4 MiB usable: the model states (1.8 MiB) fit, one sequence (1.9 MiB) does not
    assert plan.stages[0].micro_batch == 1
    assert any("activation_checkpointing" in note for note in plan.notes)
