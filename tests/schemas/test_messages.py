"""pydantic's errors in the spec's words: the path the user wrote (no pydantic tags), what was
expected, what was found."""

from __future__ import annotations

import pytest

from schema_texts import MINIMAL
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text


def only_error(old: str, new: str):
    assert old in MINIMAL
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(MINIMAL.replace(old, new))
    (error,) = raised.value.errors
    return error


@pytest.mark.parametrize("old, new, path, line, column, message, expected", [
    ("mlp: {kind: swiglu, hidden: 128}", "mlp: {hidden: 128}", "model.block.mlp", 8, 10,
     "missing 'kind': say which one (gelu, swiglu, moe)", "kind: one of gelu, swiglu, moe"),
    ("lr: 1.0e-3}", "lr: 1.0e-3, betas: [0.9]}", "train.optimizer.betas", 15, 47,
     "train.optimizer.betas has too few items (item 1 is missing)", None),
    ("name: tiny", "name: 'my run'", "name", 1, 7, "'my run' is not a valid name",
     "letters, digits, '.', '_' and '-', starting with a letter or digit"),
    ("  batch_tokens: 4k", "  batch_tokens: 4k\n  micro_batch: 0", "train.micro_batch", 15, 16,
     "expected 'auto' or a number greater than 0, found 0", "'auto' or a number greater than 0"),
    ("  d_model: 64", "  d_model: [64]", "model.d_model", 3, 12, "expected an integer, found a list", "an integer"),
    ("  budget: {tokens: 1M}", "  budget: {tokens: 1M, tokens_per_param: 20}", "train.budget.tokens", 16, 20,
     "give exactly one of budget.tokens or budget.tokens_per_param", None),
    ("{kind: python_stdlib}", "{kind: files, paths: []}", "data.sources.stdlib.paths", 12, 34,
     "must have at least 1 item after validation, not 0", None),
])
def test_message(old, new, path, line, column, message, expected):
    error = only_error(old, new)
    assert (error.dotted_path, error.line, error.column, error.message, error.expected) == (path, line, column, message, expected)


def test_a_source_name_is_checked_where_it_is_written():
    error = only_error("    stdlib: {kind: python_stdlib}", "    bad name: {kind: python_stdlib}")
    assert (error.dotted_path, error.line, error.column) == ("data.sources.bad name", 12, 5)


def test_a_key_written_in_the_wrong_section_points_to_where_it_belongs():
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(MINIMAL.replace("  n_layers: 2\n", "  n_layers: 2\n  batch_tokens: 8k\n"))
    (error,) = raised.value.errors
    assert (error.dotted_path, error.suggestion) == ("model.batch_tokens", "train.batch_tokens")
