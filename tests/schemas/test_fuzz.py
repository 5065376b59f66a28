"""Whatever a user types, loading gives a Spec or SpecErrors with positions, never a traceback."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tabula.report import format_error
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text

QUICKSTART = (Path(__file__).resolve().parents[2] / "specs" / "quickstart.yaml").read_text()
CHARACTERS = list(":{}[],-#&*!|>'\"%@`\t \n0123456789abcxyz.=~?") + ["\u00e9", "\x00"]


@st.composite
def edited_quickstart(draw) -> str:
    text = list(QUICKSTART)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text) - 1))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "delete":
            del text[position]
        else:
            character = draw(st.sampled_from(CHARACTERS))
            if action == "insert":
                text.insert(position, character)
            else:
                text[position] = character
    return "".join(text)


@settings(max_examples=80, deadline=None)
@given(edited_quickstart(), st.sampled_from([[], ["model.n_layers=3"], ["data.curriculum.1.seq_len=x"], ["a..b=1"]]))
def test_edited_specs_load_or_fail_cleanly(text, overrides):
    try:
        load_spec_text(text, overrides=overrides)
    except SpecErrors as raised:
        assert raised.errors
        for error in raised.errors:
            assert error.line is not None and error.file is not None, error
            assert format_error(error)
