"""Every file in tests/schemas/broken/ is a spec with one mistake, and says in its header comments
which error the loader must report:

    # override: a.b=v            (optional, repeatable) applied after loading the file
    # expect-file: NAME          the file the error points into (default: the spec itself)
    # expect-path: a.b.c         the error's dotted spec path
    # expect-line: 12            1-based
    # expect-column: 5           1-based (optional)
    # expect-message: text       a part of the message
    # expect-suggestion: word    the "did you mean" (optional; empty: must have none)
    # expect-quote: no           the file is no spec: the error must not show any of its lines
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tabula.report import format_error
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec

BROKEN = Path(__file__).parent / "broken"
FILES = sorted(BROKEN.glob("*.yaml"))


def expectations(path: Path) -> tuple[dict[str, str], list[str]]:
    expect, overrides = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# override: "):
            overrides.append(line[len("# override: "):])
        elif line.startswith("# expect-"):
            key, _, value = line[len("# expect-"):].partition(":")
            expect[key] = value[1:] if value.startswith(" ") else value
    return expect, overrides


def test_there_is_a_fixture_for_each_kind_of_mistake():
    names = {path.stem for path in FILES}
    assert {"unknown_key", "wrong_type", "bad_kind", "kv_heads", "d_model_not_divisible", "mla_rope_too_big",
            "curriculum_not_increasing", "mix_unknown_source", "offload_without_deepspeed", "duplicate_key", "tab",
            "syntax_error", "empty", "list_document", "python_tag", "extends_cycle_a", "extends_missing",
            "bad_override_path", "bad_token_count"} <= names


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_broken_spec_reports_its_error_at_the_right_place(path: Path):
    expect, overrides = expectations(path)
    assert "message" in expect and "line" in expect, f"{path.name} lacks its expect- header"
    with pytest.raises(SpecErrors) as raised:
        load_spec(path, overrides)
    errors = raised.value.errors
    matching = [error for error in errors if expect["message"] in error.message]
    assert matching, f"no error with {expect['message']!r} among:\n" + "\n".join(map(str, errors))
    error = matching[0]
    if "path" in expect:
        assert error.dotted_path == expect["path"]
    assert error.line == int(expect["line"]), format_error(error)
    if "column" in expect:
        assert error.column == int(expect["column"]), format_error(error)
    if "suggestion" in expect:
        assert error.suggestion == (expect["suggestion"] or None)
    expected_file = expect.get("file")
    if expected_file is None:
        assert error.file == str(path)
    elif expected_file.startswith("<override"):
        assert error.file == expected_file
    else:
        assert Path(error.file).name == expected_file
    text = format_error(error)
    assert text.splitlines()[0].startswith(f"{error.file}:{error.line}:")
    if expect.get("quote") == "no":  # not a spec: nothing of it is shown, not even a comment
        shown = text.splitlines()
        assert "^" not in text and not any(line.strip() and line in shown for line in path.read_text().splitlines())
        return
    # Every error renders with an excerpt of the line it points at, and a caret under the column.
    assert "^" in text


def test_all_errors_are_reported_not_only_the_first(tmp_path):
    spec = (BROKEN / "kv_heads.yaml").read_text()
    spec = spec.replace("  n_layers: 2", "  n_layer: 2").replace("batch_tokens: 4k", "batch_tokens: 12q")
    (tmp_path / "many.yaml").write_text(spec)
    with pytest.raises(SpecErrors) as raised:
        load_spec(tmp_path / "many.yaml")
    paths = {error.dotted_path for error in raised.value.errors}
    assert {"model.n_layer", "model.n_layers", "model.block.attention.n_kv_heads", "train.batch_tokens"} <= paths
    lines = [error.line for error in raised.value.errors]
    assert lines == sorted(lines)


def test_errors_in_several_overrides_are_all_reported():
    with pytest.raises(SpecErrors) as raised:
        load_spec(BROKEN / "bad_override_path.yaml", ["nonsense", "model.d_model.x=1"])
    files = [error.file for error in raised.value.errors]
    assert files == ["<override 1: nonsense>", "<override 2: model.d_model.x=1>"]
    assert "PATH=VALUE" in raised.value.errors[0].message
    assert "model.d_model is a single value" in raised.value.errors[1].message
