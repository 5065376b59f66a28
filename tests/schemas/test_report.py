"""tabula/report.py: the one place errors become text."""

from __future__ import annotations

import io

from tabula.report import format_error, load_spec_or_report, print_errors, split_spec_and_overrides
from tabula.schemas.errors import SpecError


def test_format_error_with_excerpt_caret_and_details():
    error = SpecError("unknown key 'n_layer' in model", path=("model", "n_layer"), file="s.yaml", line=12, column=3,
                      expected="one of ...", found="'n_layer'", suggestion="n_layers", source_line="  n_layer: 4")
    assert format_error(error) == (
        "s.yaml:12:3: error: model.n_layer: unknown key 'n_layer' in model\n"
        "   12 |   n_layer: 4\n"
        "      |   ^~~~~~~\n"
        "  expected: one of ...\n"
        "  found: 'n_layer'\n"
        "  hint: did you mean `n_layers`?"
    )
    colored = format_error(error, color=True)
    assert "\033[31m" in colored and "n_layers" in colored


def test_format_error_reads_the_line_from_the_file_when_not_given(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\ntrain:\n  batch_tokens: 1000\n")
    error = SpecError("not divisible", path=("train", "batch_tokens"), file=str(spec), line=3, column=17)
    assert format_error(error).splitlines()[1:] == ["    3 |   batch_tokens: 1000", "      |                 ^~~~"]


def test_format_error_without_position():
    assert format_error(SpecError("bad", path=("seed",))) == "error: seed: bad"
    assert format_error(SpecError("no such file: x.yaml", file="x.yaml")) == "x.yaml: error: no such file: x.yaml"


def test_print_errors_separates_errors_and_loads_or_reports(tmp_path):
    stream = io.StringIO()
    print_errors([SpecError("a"), SpecError("b")], stream=stream, color=False)
    assert stream.getvalue() == "error: a\n\nerror: b\n"
    stream = io.StringIO()
    assert load_spec_or_report(tmp_path / "missing.yaml", [], stream=stream) is None
    assert "no such file" in stream.getvalue()


def test_split_spec_and_overrides(tmp_path):
    odd = tmp_path / "a=b.yaml"
    odd.write_text("")
    assert split_spec_and_overrides(["s.yaml", "model.n_layers=2", str(odd), "t.yaml"]) == (
        ["s.yaml", str(odd), "t.yaml"], ["model.n_layers=2"])


def test_a_long_source_line_is_cut_around_the_caret():
    line = "".join(f"{n:04d}," for n in range(2000))  # 10,000 characters, every spot different
    for column in (1, 52, 5001, len(line)):
        error = SpecError("nested too deeply", file="s.yaml", line=2, column=column, source_line=line)
        _, excerpt, caret = format_error(error).splitlines()
        assert len(excerpt) < 120
        shown = excerpt[len("    2 | "):]
        assert shown.startswith("...") == (column > 40) and shown.endswith("...") == (column < len(line) - 80)
        # the caret still sits under the character the column names
        assert shown[caret.index("^") - len("      | ")] == line[column - 1]


def test_a_missing_extends_names_the_path_once(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("extends: no_such_base.yaml\n")
    assert load_spec_or_report(str(spec), []) is None
    first = capsys.readouterr().err.splitlines()[0]
    assert "error: extends: cannot find 'no_such_base.yaml' (extends chain:" in first
    assert first.count("extends:") == 1
