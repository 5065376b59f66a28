"""The JSON Schema of a spec, for editors (completion, hover help from the field descriptions,
checking as you type) and for other tools. `tabula schema` prints it; a copy is committed at
schemas/tabula-spec.schema.json, which the example specs name on their first line:

    # yaml-language-server: $schema=../schemas/tabula-spec.schema.json

A spec with `extends:` writes only what it changes, so for such a spec no key is required: the
schema checks it against a "partial" copy of every definition (`required` dropped; discriminated
unions matched with anyOf, since a partial member may omit its `kind`). The loader still checks
the merged result in full.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .spec import Spec

SCHEMA_ID = "https://tabula.dev/schemas/tabula-spec.schema.json"
SCHEMA_FILE = Path(__file__).resolve().parent / "tabula-spec.schema.json"
_PARTIAL = "Partial"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, as a dict. Draft-07, the draft the YAML language server
    (VS Code's YAML extension and others) implements; pydantic's 2020-12 output is lowered to it
    (`$defs` -> `definitions`, `prefixItems` -> `items`)."""
    full = Spec.model_json_schema(mode="validation")
    definitions = full.pop("$defs", {})
    root = full  # the Spec model itself, its refs pointing into $defs
    definitions["Spec"] = root
    partial = {name + _PARTIAL: _partial(definition) for name, definition in definitions.items()}
    schema: dict[str, Any] = _draft7({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "tabula experiment spec",
        "description": root.get("description", ""),
        "type": "object",
        "if": {"required": ["extends"], "properties": {"extends": {"type": "string"}}},
        "then": {"$ref": "#/$defs/Spec" + _PARTIAL},
        "else": {"$ref": "#/$defs/Spec"},
        "$defs": {**definitions, **partial},
    })
    return schema


def schema_text() -> str:
    """json_schema() as the text committed at schemas/tabula-spec.schema.json."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def _draft7(schema: Any) -> Any:
    """pydantic's 2020-12 keywords in their draft-07 spelling."""
    if isinstance(schema, dict):
        result = {}
        for key, value in schema.items():
            if key == "$defs":
                key = "definitions"
            elif key == "prefixItems":
                key = "items"
            result[key] = _draft7(value)
        return result
    if isinstance(schema, list):
        return [_draft7(item) for item in schema]
    if isinstance(schema, str) and schema.startswith("#/$defs/"):  # $ref, and discriminator mappings
        return "#/definitions/" + schema[len("#/$defs/"):]
    return schema


def _partial(definition: Any) -> Any:
    """A copy of `definition` with no required keys, anyOf for oneOf, refs to partial copies."""
    if isinstance(definition, dict):
        result = {}
        for key, value in definition.items():
            if key == "required":
                continue
            if key == "discriminator":
                continue
            if key == "oneOf":
                key = "anyOf"
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                value = value + _PARTIAL
            elif key == "mapping" and isinstance(value, dict):
                value = {tag: ref + _PARTIAL for tag, ref in value.items()}
            result[key] = _partial(value)
        return result
    if isinstance(definition, list):
        return [_partial(item) for item in definition]
    return copy.deepcopy(definition)
