"""Safe YAML with positions: nothing in a spec is ever constructed or executed."""

from __future__ import annotations

import pytest

from tabula.schemas.errors import SpecErrors
from tabula.schemas.yaml_source import parse_yaml


def test_yaml_12_core_scalars():
    doc = parse_yaml("a: 1e-3\nb: 0x10\nc: yes\nd: ~\ne: '12'\nf: .inf\ng: 1_000\nh: true\ni: 2024-01-01\n")
    assert doc.data == {"a": 0.001, "b": 16, "c": "yes", "d": None, "e": "12", "f": float("inf"), "g": 1000,
                        "h": True, "i": "2024-01-01"}


def test_positions_of_keys_and_values():
    doc = parse_yaml("model:\n  block: {mlp: {hidden: 8}}\nlist:\n  - x\n  - {y: 2}\n", "f.yaml")
    assert (doc.keys[("model", "block")].line, doc.keys[("model", "block")].column) == (2, 3)
    assert (doc.values[("model", "block", "mlp", "hidden")].line, doc.values[("model", "block", "mlp", "hidden")].column) == (2, 25)
    assert (doc.values[("list", 1, "y")].line, doc.values[("list", 1, "y")].column) == (5, 9)


@pytest.mark.parametrize("text", [
    "a: !!python/object/apply:os.system ['touch {marker}']\n",
    "a: !!python/object/new:os.system ['touch {marker}']\n",
    "a: !!python/name:os.system\n",
    "? !!python/object/apply:os.system ['touch {marker}']\n: 1\n",
])
def test_object_tags_are_refused_and_nothing_runs(tmp_path, text):
    marker = tmp_path / "executed"
    with pytest.raises(SpecErrors) as raised:
        parse_yaml(text.format(marker=marker))
    messages = [error.message for error in raised.value.errors]
    # a tagged key is refused as a key (it is not a plain name); anywhere else the tag is named
    expected = "a key must be a plain name" if text.startswith("?") else "the tag !!python/"
    assert any(expected in message for message in messages), messages
    assert not marker.exists()


def test_alias_bombs_and_cycles_are_errors_not_hangs():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))
    with pytest.raises(SpecErrors) as raised:
        parse_yaml(bomb)
    assert "more than" in raised.value.errors[0].message
    with pytest.raises(SpecErrors):
        parse_yaml("a: &a [*a]\n")


def test_every_duplicate_and_tag_is_reported_at_once():
    with pytest.raises(SpecErrors) as raised:
        parse_yaml("a: 1\na: 2\nb: !x 1\nc: {d: 1, d: 2}\n")
    assert [(error.line, error.column) for error in raised.value.errors] == [(2, 1), (3, 4), (4, 11)]


def test_a_second_document_is_an_error():
    with pytest.raises(SpecErrors) as raised:
        parse_yaml("a: 1\n---\nb: 2\n")
    assert raised.value.errors[0].line == 2
