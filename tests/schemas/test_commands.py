"""`tabula validate`, `tabula schema` and `tabula diff` as a user runs them: exit codes, text and
--json shapes."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from schema_texts import MINIMAL
from tabula.cli import main
from tabula.schemas.canonical import canonical_yaml, spec_hash
from tabula.schemas.jsonschema import json_schema
from tabula.schemas.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "specs" / "presets").glob("*.yaml"))
BROKEN = Path(__file__).parent / "broken"


def test_every_example_spec_and_preset_validates(capsys):
    assert (ROOT / "specs" / "quickstart.yaml") in EXAMPLES and len(EXAMPLES) > 1
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(EXAMPLES)


def test_validate_prints_every_error_with_excerpt_and_caret(capsys):
    path = BROKEN / "unknown_key.yaml"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:10:3: error: model.n_layer: unknown key 'n_layer' in model" in err
    assert "   10 |   n_layer: 2\n" in err
    assert "      |   ^~~~~~~\n" in err
    assert "hint: did you mean `n_layers`?" in err
    assert f"{path}:8:1: error: model.n_layers: missing required key 'n_layers' in model" in err
    assert f"{path}: 2 errors" in err


def test_validate_json_one_object_per_file(capsys):
    good, bad = ROOT / "specs" / "quickstart.yaml", BROKEN / "kv_heads.yaml"
    assert main(["validate", str(good), str(bad), "--json"]) == 2
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [obj["file"] for obj in objects] == [str(good), str(bad)]
    assert objects[0] == {"file": str(good), "valid": True, "spec_hash": spec_hash(load_spec(good)), "errors": []}
    assert objects[1]["valid"] is False and objects[1]["spec_hash"] is None
    (error,) = objects[1]["errors"]
    assert {"path", "line", "column", "message", "expected", "found", "suggestion", "file"} <= set(error)
    assert (error["path"], error["line"], error["column"]) == ("model.block.attention.n_kv_heads", 11, 52)


def test_validate_applies_overrides_to_each_spec(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(MINIMAL)
    assert main(["validate", str(spec), "model.n_layers=3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec_hash"] == spec_hash(load_spec(spec, ["model.n_layers=3"]))
    assert main(["validate", str(spec), "model.block.attention.n_kv_heads=3"]) == 2
    err = capsys.readouterr().err
    assert "<override 1: model.block.attention.n_kv_heads=3>:1:34: error:" in err
    assert "    1 | model.block.attention.n_kv_heads=3" in err


def test_validate_missing_file_is_exit_2_without_traceback(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_schema_prints_the_committed_schema(tmp_path, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    out = tmp_path / "sub" / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema()


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_diff_equal_specs_exit_0(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL.replace("4k", "4096").replace("1.0e-3", "0.001"))
    assert main(["diff", str(a), str(b), "--no-impact"]) == 0
    assert "no differences" in capsys.readouterr().out
    assert main(["diff", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_diff_groups_changes_by_section(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL.replace("n_layers: 2", "n_layers: 4").replace("lr: 1.0e-3", "lr: 3.0e-4")
               + "track: {tags: [x]}\n")
    assert main(["diff", str(a), str(b), "--no-impact"]) == 1
    out = capsys.readouterr().out
    assert "\nmodel\n  ~ model.n_layers: 2 -> 4\n" in out
    assert "\ntrain\n  ~ train.optimizer.lr: 0.001 -> 0.0003\n" in out
    assert "\ntrack\n  + track.tags.0: x\n" in out
    assert out.index("\nmodel\n") < out.index("\ntrain\n") < out.index("\ntrack\n")
    assert "3 changes in 3 sections" in out


def test_diff_json_is_a_list_of_changes(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL.replace("n_kv_heads: 2", "n_kv_heads: 2, window: 32") + "  eval: {every_tokens: 64k}\n")
    assert main(["diff", str(a), str(b), "--json", "--no-impact"]) == 1
    changes = json.loads(capsys.readouterr().out)
    assert changes == [
        {"path": "model.block.attention.window", "kind": "changed", "old": None, "new": 32},
        {"path": "train.eval", "kind": "changed", "old": None,
         "new": {"every_tokens": 65536, "tokens": 65536, "sample": {"prompt": "", "max_new_tokens": 48}}},
    ]


def test_diff_reads_run_directories(tmp_path, capsys):
    run_a, run_b = tmp_path / "run-a", tmp_path / "run-b"
    run_a.mkdir(), run_b.mkdir()
    spec = load_spec(_write(tmp_path, "s.yaml", MINIMAL))
    (run_a / "resolved.yaml").write_text(canonical_yaml(spec))
    (run_b / "resolved.yaml").write_text(canonical_yaml(load_spec(tmp_path / "s.yaml", ["seed=7"])))
    assert main(["diff", str(run_a), str(run_b), "--json", "--no-impact"]) == 1
    assert json.loads(capsys.readouterr().out) == [{"path": "seed", "kind": "changed", "old": 1337, "new": 7}]


def test_diff_applies_overrides_to_both_sides(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL.replace("n_layers: 2", "n_layers: 4"))
    assert main(["diff", str(a), str(b), "seed=7", "model.n_layers=3", "--json", "--no-impact"]) == 0  # both 3 layers now
    assert json.loads(capsys.readouterr().out) == []
    assert main(["diff", str(a), str(b), "seed=7", "--no-impact"]) == 1
    out = capsys.readouterr().out
    assert "~ model.n_layers: 2 -> 4" in out and "seed" not in out.split("+++")[1]  # the same seed on both sides
    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved.yaml").write_text(canonical_yaml(load_spec(a)))
    assert main(["diff", str(run), str(a), "model.n_layers=5", "--json", "--no-impact"]) == 0  # a run's resolved spec too
    assert main(["diff", str(a), str(b), "model.n_layerz=3"]) == 2
    assert "<override 1: model.n_layerz=3>" in capsys.readouterr().err


def test_diff_bad_input_exit_2(tmp_path, capsys):
    good = _write(tmp_path, "a.yaml", MINIMAL)
    assert main(["diff", str(good), str(tmp_path)]) == 2
    assert "without resolved.yaml" in capsys.readouterr().err
    assert main(["diff", str(good), str(BROKEN / "tab.yaml")]) == 2
    assert "a tab in the indentation" in capsys.readouterr().err


def test_diff_prints_the_compilers_impact_where_it_exists(tmp_path, capsys, monkeypatch):
    seen = {}

    class Impact:
        def lines(self):
            return ["parameters   1.0M -> 2.0M"]

        def as_dict(self):
            return {}

    def annotate(spec_a, spec_b, changes):
        seen["args"] = (spec_a.model.n_layers, spec_b.model.n_layers, [change.path for change in changes])
        changes[0].impact = "+1 layer"
        return Impact()

    monkeypatch.setitem(sys.modules, "tabula.compiler.impact", types.SimpleNamespace(annotate=annotate))
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL.replace("n_layers: 2", "n_layers: 3"))
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert seen["args"] == (2, 3, ["model.n_layers"])
    assert "  ~ model.n_layers: 2 -> 3\n      +1 layer\n" in out
    assert out.rstrip().endswith("parameters   1.0M -> 2.0M")
    assert main(["diff", str(a), str(b), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["impact"] == "+1 layer"


def test_validate_and_diff_do_not_import_torch():
    code = (
        "import sys\n"
        "import tabula.schemas, tabula.schemas.loader, tabula.schemas.canonical, tabula.schemas.diff\n"
        "from tabula.cli import main\n"
        "assert main(['validate', 'specs/quickstart.yaml']) == 0\n"
        "assert main(['diff', 'specs/quickstart.yaml', 'specs/quickstart.yaml', '--no-impact']) == 0\n"
        "assert main(['schema', '--out', '/dev/null']) == 0\n"
        "heavy = [name for name in ('torch', 'deepspeed', 'datasets', 'textual', 'aim') if name in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command, says", [
    ("validate", "Exit status: 0 when every spec is valid, 2 otherwise."),
    ("schema", "tabula schema --out schemas/tabula-spec.schema.json"),
    ("diff", "Exit status: 0 when the specs are equal, 1 when they differ, 2 on bad input."),
    ("plan", "tabula plan specs/tabulaprima-278m.yaml"),
    ("new", "ctrl+s save"),
    ("watch", "s stop the run with a checkpoint"),
])
def test_help_explains_each_command(capsys, monkeypatch, command, says):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps option help to the terminal; docstrings are ours
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tabula {command}") and says in out
    assert max(len(line) for line in out.splitlines()) <= 100, "help lines wrap in an 100-column terminal"


def test_diff_shows_token_counts_as_specs_write_them(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", MINIMAL)
    b = _write(tmp_path, "b.yaml", MINIMAL + "  eval: {every_tokens: 2.5M, tokens: 1000}\n")
    assert main(["diff", str(a), str(b), "--no-impact"]) == 1
    out = capsys.readouterr().out
    # 2.5M rather than 2621440; a count no suffix writes exactly stays digits
    assert '~ train.eval: null -> {every_tokens: 2.5M, tokens: 1000, sample: {prompt: "", max_new_tokens: 48}}' in out
    assert main(["diff", str(a), str(b), "--json", "--no-impact"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["new"]["every_tokens"] == 2621440  # numbers in JSON
