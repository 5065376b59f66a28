"""The JSON Schema editors use: committed, fresh, and accepting every example spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabula.schemas.jsonschema import SCHEMA_FILE, json_schema, schema_text
from tabula.schemas.yaml_source import read_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "specs" / "presets").glob("*.yaml"))


def test_committed_schema_is_fresh():
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "schemas/tabula-spec.schema.json is stale: run `tabula schema --out schemas/tabula-spec.schema.json`")


def test_every_field_has_a_description():
    missing = []
    for name, definition in json_schema()["definitions"].items():
        for field, prop in definition.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{name}.{field}")
    assert not missing


def test_example_specs_point_editors_at_the_schema():
    for path in EXAMPLES:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA_FILE, path


def test_the_schema_is_a_valid_draft_07_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert "$defs" not in json.dumps(schema) and "prefixItems" not in json.dumps(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_editors_accept_the_example_specs(path):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(read_yaml(path).data)]
    assert not errors


def test_editors_flag_a_typo_and_a_missing_key():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json_schema())
    data = read_yaml(ROOT / "specs" / "quickstart.yaml").data
    data["model"]["n_layer"] = data["model"].pop("n_layers")
    messages = [error.message for error in validator.iter_errors(data)]
    assert any("'n_layer' was unexpected" in message for message in messages)
    assert any("'n_layers' is a required property" in message for message in messages)
    # a spec that extends another writes only what it changes: nothing is required, typos still are errors
    assert not list(validator.iter_errors({"name": "x", "extends": "llama-tiny", "model": {"n_layers": 2}}))
    assert list(validator.iter_errors({"name": "x", "extends": "llama-tiny", "model": {"n_layer": 2}}))
