"""extends: (deep merge, lists replaced, presets by name, chains, cycles) and CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabula.schemas.canonical import spec_hash
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import SPECS_DIR, load_spec, load_spec_text, position_of

from schema_texts import MINIMAL


def test_extends_deep_merges_mappings_and_replaces_lists(write):
    write("base.yaml", MINIMAL + "  eval: {every_tokens: 64k}\n")
    child = write("child.yaml", """\
        name: child
        extends: base.yaml
        model:
          n_layers: 3
          block:
            attention: {n_kv_heads: 1}
        data:
          curriculum:
            - {seq_len: 64}
        """)
    spec = load_spec(child)
    assert spec.name == "child" and spec.extends == "base.yaml"
    assert spec.model.n_layers == 3 and spec.model.d_model == 64
    assert spec.model.block.attention.kind == "gqa"
    assert (spec.model.block.attention.n_heads, spec.model.block.attention.n_kv_heads) == (4, 1)
    assert [stage.seq_len for stage in spec.data.curriculum] == [64]
    assert spec.train.eval.every_tokens == 65536


def test_positions_come_from_the_file_that_set_the_value(write):
    base = write("base.yaml", MINIMAL)
    child = write("sub/child.yaml", "name: child\nextends: ../base.yaml\nmodel:\n  n_layers: 3\n")
    spec = load_spec(child, allow_extends_outside=True)  # ../ leaves the spec's folder: allowed explicitly
    where = position_of(spec, "model.n_layers")
    assert (where.file, where.line, where.column) == (str(child), 4, 13)
    where = position_of(spec, "model.d_model")
    assert Path(where.file).resolve() == base.resolve() and (where.line, where.column) == (3, 12)
    assert position_of(spec, "train.grad_clip") is None  # a default: written nowhere


def test_an_error_in_an_inherited_value_points_into_the_base_file(write):
    write("base.yaml", MINIMAL.replace("n_kv_heads: 2", "n_kv_heads: 2, window: 0"))
    child = write("child.yaml", "name: child\nextends: base.yaml\n")
    with pytest.raises(SpecErrors) as raised:
        load_spec(child)
    (error,) = raised.value.errors
    assert error.dotted_path == "model.block.attention.window"
    assert Path(error.file).name == "base.yaml" and error.line == 7


def test_extends_a_preset_by_name_and_by_path(write):
    presets = sorted((SPECS_DIR / "presets").glob("*.yaml"))
    assert presets, "specs/presets/ holds the presets"
    name = presets[0].stem
    by_name = load_spec(write("a.yaml", f"name: a\nextends: {name}\n"))
    by_path = load_spec(write("b.yaml", f"name: a\nextends: presets/{name}.yaml\n"))
    assert by_name == by_path.model_copy(update={"extends": name})
    inlined = load_spec(presets[0], [f"name=a"])
    assert spec_hash(by_name) == spec_hash(inlined)


def test_extends_chain_of_three(write):
    write("a.yaml", MINIMAL)
    write("b.yaml", "name: b\nextends: a.yaml\nseed: 7\n")
    spec = load_spec(write("c.yaml", "name: c\nextends: b.yaml\nmodel: {n_layers: 5}\n"))
    assert (spec.name, spec.seed, spec.model.n_layers) == ("c", 7, 5)


def test_extends_cycle_names_the_chain(write):
    write("a.yaml", "name: a\nextends: b.yaml\n")
    write("b.yaml", "name: b\nextends: c.yaml\n")
    write("c.yaml", "name: c\nextends: a.yaml\n")
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("a.yaml", "name: a\nextends: b.yaml\n"))
    (error,) = raised.value.errors
    assert "extends cycle:" in error.message
    assert [Path(part.strip()).name for part in error.message.split(":", 1)[1].split("->")] == ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]
    assert Path(error.file).name == "c.yaml" and error.line == 2


def test_extends_missing_file_names_where_it_looked_and_the_closest_preset(write):
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("a.yaml", "name: a\nextends: llama-tinyy\n"))
    (error,) = raised.value.errors
    assert error.dotted_path == "extends" and error.line == 2 and error.column == 10
    assert "cannot find 'llama-tinyy'" in error.message and "looked in" in error.message
    assert error.suggestion == "llama-tiny"


def test_extends_must_be_a_string(write):
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("a.yaml", "name: a\nextends: [x.yaml]\n"))
    assert raised.value.errors[0].dotted_path == "extends"


def test_overrides_set_values_list_items_and_whole_sections(write):
    path = write("s.yaml", MINIMAL + "data_placeholder: 0\n".replace("data_placeholder: 0\n", ""))
    spec = load_spec(path, [
        "model.n_layers=6",
        "model.block.attention={kind: mha, n_heads: 8}",
        "train.optimizer.lr=3e-4",
        "train.budget.tokens=2M",
        "track.tags=[a, 'b c']",
        "seed=0",
    ])
    assert spec.model.n_layers == 6
    assert spec.model.block.attention.kind == "mha" and spec.model.block.attention.n_heads == 8
    assert spec.train.optimizer.lr == 3e-4 and spec.train.budget.tokens == 2 * 2**20
    assert spec.track.tags == ["a", "b c"] and spec.seed == 0


def test_override_of_a_list_item(write):
    text = MINIMAL.replace("    stdlib: {kind: python_stdlib}\n",
                           "    stdlib: {kind: python_stdlib}\n  curriculum:\n    - {until_tokens: 64k, seq_len: 64}\n    - {seq_len: 128}\n")
    spec = load_spec(write("s.yaml", text), ["data.curriculum.1.seq_len=96", "data.curriculum.0.mix={stdlib: 2}"])
    assert [stage.seq_len for stage in spec.data.curriculum] == [64, 96]
    assert spec.data.curriculum[0].mix == {"stdlib": 2.0}
    where = position_of(spec, "data.curriculum.1.seq_len")
    assert where.file == "<override 1: data.curriculum.1.seq_len=96>" and where.column == 27
    assert position_of(spec, "data.curriculum.0.seq_len").file == str(write("s.yaml", text))


def test_later_overrides_win_and_null_clears(write):
    spec = load_spec(write("s.yaml", MINIMAL + "  eval: {every_tokens: 64k}\n"),
                     ["model.n_layers=3", "model.n_layers=4", "train.eval=null"])
    assert spec.model.n_layers == 4 and spec.train.eval is None


def test_override_creates_a_section_that_was_null(write):
    spec = load_spec(write("s.yaml", MINIMAL), ["train.eval.every_tokens=32k"])
    assert spec.train.eval.every_tokens == 32768


def test_override_of_an_unwritten_list_item_says_to_set_the_list(write):
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("s.yaml", MINIMAL), ["data.curriculum.0.seq_len=64"])
    (error,) = raised.value.errors
    assert "set the whole list: data.curriculum=[...]" in error.message


def test_override_values_use_the_safe_parser(write):
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("s.yaml", MINIMAL), ["name=!!python/object/apply:os.getcwd []"])
    (error,) = raised.value.errors
    assert "not allowed" in error.message and error.file.startswith("<override 1:")


def test_load_spec_text_and_base_dir(write, tmp_path):
    spec = load_spec_text(MINIMAL, base_dir=tmp_path)
    assert spec.source_path is None and spec.base_dir == tmp_path.resolve()
    loaded = load_spec(write("s.yaml", MINIMAL))
    assert loaded.source_path == (tmp_path / "s.yaml").resolve() and loaded.base_dir == tmp_path.resolve()
    assert loaded == spec  # where a spec came from is not part of its value
    with pytest.raises(SpecErrors) as raised:
        load_spec_text("name: x\nmodel: 3\n", name="<wizard>")
    assert {error.file for error in raised.value.errors} == {"<wizard>"}


def test_missing_spec_file_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(SpecErrors) as raised:
        load_spec(tmp_path / "nope.yaml")
    assert "no such file" in raised.value.errors[0].message
    with pytest.raises(SpecErrors) as raised:
        load_spec(tmp_path)
    assert "is a directory" in raised.value.errors[0].message


def test_extends_cannot_be_overridden(write):
    with pytest.raises(SpecErrors) as raised:
        load_spec(write("s.yaml", MINIMAL), ["extends=llama-tiny"])
    assert "extends cannot be overridden" in raised.value.errors[0].message


def test_error_at_positions_errors_found_after_loading(write):
    from tabula.schemas.loader import error_at

    path = write("s.yaml", MINIMAL)
    spec = load_spec(path)
    error = error_at(spec, ("train", "batch_tokens"), "not divisible", expected="a multiple of 128")
    assert (error.file, error.line, error.column, error.expected) == (str(path), 14, 17, "a multiple of 128")
    assert error.source_line == "  batch_tokens: 4k"
    defaulted = error_at(spec, ("data", "curriculum", 0, "seq_len"), "too long")
    assert (defaulted.file, defaulted.line) == (str(path), 9)  # the data: section, the closest thing written
