"""A spec that validates does not crash the run: every number the run cannot take is refused by
`validate`, at the spec path and position of the value (schemas/limits.py says why each bound)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabula.schemas.errors import SpecErrors
from tabula.schemas.limits import INT64_MAX, MAX_LAYERS, MAX_TENSOR_ELEMENTS, MAX_TOKENS
from tabula.schemas.loader import load_spec
from tabula.schemas.spec import MAX_NAME_LENGTH

from hostile_values import FLOATS, NEVER_A_NUMBER, NEVER_A_WHOLE_NUMBER, NUMBERS

QUICKSTART = Path(__file__).resolve().parents[2] / "specs" / "quickstart.yaml"

def refused(overrides: list[str]) -> list:
    with pytest.raises(SpecErrors) as raised:
        load_spec(QUICKSTART, overrides)
    return raised.value.errors


def assert_refused_at(path: str, value: str) -> None:
    errors = refused([f"{path}={value}"])
    assert [error.dotted_path for error in errors] == [path], errors
    assert all(error.file and error.file.startswith("<override 1:") and error.line == 1 for error in errors), errors


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_number_field_takes_nan_infinity_a_wrong_type_or_a_64_bit_overflow(data):
    path = data.draw(st.sampled_from(NUMBERS))
    assert_refused_at(path, data.draw(st.sampled_from(NEVER_A_NUMBER if path in FLOATS else NEVER_A_WHOLE_NUMBER)))


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
@pytest.mark.parametrize("betas, index", [("[0.9, 2]", 1), ("[1, 0.95]", 0), ("[0.9, 1.0]", 1), ("[-0.1, 0.9]", 0)])
def test_betas_outside_0_1_are_refused_before_the_run(optimizer, betas, index):
    errors = refused([f"train.optimizer={{kind: {optimizer}, lr: 1.0e-3, betas: {betas}}}"])
    assert [error.dotted_path for error in errors] == [f"train.optimizer.betas.{index}"]


def test_seeds_fit_64_bits():
    assert load_spec(QUICKSTART, [f"seed={INT64_MAX}"]).seed == INT64_MAX
    (error,) = refused([f"seed={2**70}"])
    assert error.dotted_path == "seed" and "2**63 - 1" in error.message


def test_token_counts_stop_where_floats_stop_being_exact():
    assert load_spec(QUICKSTART, ["train.budget.tokens=8T"]).train.budget.tokens == 8 * 2**40
    for value in (str(MAX_TOKENS + 1), "1e30", "99999999999999999999999B", "1e999999k", "1e999999999999k", "9" * 5000 + "k"):
        assert [error.dotted_path for error in refused([f"train.budget.tokens={value}"])] == ["train.budget.tokens"]
    assert [e.dotted_path for e in refused(["train.batch_tokens=2T"])] == ["train.batch_tokens"]


@pytest.mark.parametrize("override, path", [
    ("model.d_model=1000000000000", "model.d_model"),  # the storage overflow: 10**24 elements
    (f"model.vocab_size={2**60}", "model.vocab_size"),
    (f"model.max_seq_len={2**62}", "model.max_seq_len"),
    (f"model.block.mlp.hidden={2**60}", "model.block.mlp.hidden"),
])
def test_a_tensor_no_device_can_hold_is_refused_naming_its_largest_factor(override, path):
    (error,) = refused([override])
    assert error.dotted_path == path and "elements" in error.message and error.line == 1


def test_sizes_whose_sum_over_the_blocks_overflows_are_refused_at_n_layers():
    d_model = 2**28  # each matrix fits (2**56 elements), 64 blocks of them do not
    (error,) = refused([f"model.d_model={d_model}", f"model.block.mlp.hidden={d_model}", "model.n_layers=64"])
    assert error.dotted_path == "model.n_layers" and f"{MAX_TENSOR_ELEMENTS + 1:.3g}" in error.message


def test_more_blocks_than_a_model_may_have_is_refused_before_plan_lists_them():
    load_spec(QUICKSTART, [f"model.n_layers={MAX_LAYERS}"])
    (error,) = refused([f"model.n_layers={10**8}"])
    assert error.dotted_path == "model.n_layers" and str(MAX_LAYERS) in error.message


@pytest.mark.parametrize("name", ["a" * (MAX_NAME_LENGTH + 1), "a" * 300, ".", "..", "a/b", "../x", "-x", "\u65e5\u672c", ""])
def test_a_name_that_cannot_name_a_run_folder_is_refused(name):
    (error,) = refused([f"name='{name}'"])
    assert error.dotted_path == "name"


def test_a_name_of_the_longest_length_is_a_valid_folder_name(tmp_path):
    name = "a" * MAX_NAME_LENGTH
    assert load_spec(QUICKSTART, [f"name={name}"]).name == name
    (tmp_path / f"{name}-20261128-101500").mkdir()  # the run folder it names


def test_ceilings_that_keep_data_preparation_from_hanging():
    assert [e.dotted_path for e in refused(["data.filters.1={kind: dedup, method: minhash, num_perm: 100000}"])] == \
        ["data.filters.1.num_perm"]
    assert [e.dotted_path for e in refused(["data.workers=100000"])] == ["data.workers"]
    assert [e.dotted_path for e in refused([f"data.tokenizer.vocab_size={2**33}"])] == ["data.tokenizer.vocab_size"]
    assert [e.dotted_path for e in refused([f"parallel.world_size={2**40}"])] == ["parallel.world_size"]
    assert [e.dotted_path for e in refused(["train.eval.sample.max_new_tokens=1000000"])] == ["train.eval.sample.max_new_tokens"]


def test_mixture_weights_whose_sum_overflows_are_refused():
    errors = refused(["data.sources.web={kind: python_stdlib}", "data.curriculum.0.mix={stdlib: 1e308, web: 1e308}"])
    assert [error.dotted_path for error in errors] == ["data.curriculum.0.mix.stdlib"]


def test_a_quality_filter_that_drops_every_document_is_refused():
    errors = refused(["data.filters.0={kind: quality, min_mean_word_length: 12, max_mean_word_length: 4}"])
    assert [error.dotted_path for error in errors] == ["data.filters.0.max_mean_word_length"]


@pytest.mark.parametrize("value", ['"\\0"', '"a\\0b"', '"\\ud800"', '"x\\udfff"'])
@pytest.mark.parametrize("path", ["track.runs_dir", "track.tags", "name", "data.tokenizer.eos_token"])
def test_strings_that_cannot_be_a_path_or_utf8_are_refused(path, value):
    value = f"[{value}]" if path == "track.tags" else value
    (error,) = refused([f"{path}={value}"])
    assert error.dotted_path.startswith(path) and ("NUL" in error.message or "surrogate" in error.message)


def test_a_budget_smaller_than_one_batch_is_refused_as_the_run_would():
    (error,) = refused(["train.budget.tokens=1k"])
    assert error.dotted_path == "train.budget.tokens" and "nothing to train" in error.message


@pytest.mark.parametrize("pattern", ["(" * 5000 + ")" * 5000, "a{99999999999}", "[", "(?P<1>x)"])
def test_a_filter_pattern_python_cannot_compile_is_refused_not_raised(pattern):
    (error,) = refused([f"data.filters.2.pattern='{pattern}'"])
    assert error.dotted_path == "data.filters.2.pattern" and "regular expression" in error.message


@pytest.mark.parametrize("position", ["none", "learned"])
def test_a_model_of_mamba_layers_only_validates_and_its_sizes_are_still_checked(position):
    """A model without attention has no head width: the size checks ask for one only for a rotary table."""
    jamba = QUICKSTART.parent / "presets" / "jamba-tiny.yaml"
    spec = load_spec(jamba, ["model.layers=[]", f"model.position.kind={position}"])
    assert {block.kind for block in spec.model.layer_blocks} == {"mamba"}
    with pytest.raises(SpecErrors) as raised:
        load_spec(jamba, ["model.layers=[]", f"model.position.kind={position}", f"model.d_model={2**40}"])
    assert [error.dotted_path for error in raised.value.errors] == ["model.d_model"]
