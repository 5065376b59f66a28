"""The wizard's spec written as YAML, each key with a short comment taken from its schema description."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from .schema_form import DICT, LIST, MODEL, UNION, FormField, default_kind, form_fields

COMMENT_CHARS = 60


def dump_spec(data: dict[str, Any], model: type[BaseModel], *, header: str | None = None,
              schema: str | None = None) -> str:
    """`data` (the form's nested dicts) as YAML in the schema's key order, with comments from the
    field descriptions. Empty optional sections are left out (their defaults apply). `schema`, a
    path or URL of the JSON schema, becomes the first line for editors (yaml-language-server)."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    stream = io.StringIO()
    if schema:
        stream.write(f"# yaml-language-server: $schema={schema}\n")
    if header:
        stream.write("".join(f"# {line}\n" for line in header.splitlines()))
    yaml.dump(_model_map(data, form_fields(model), 0), stream)
    return stream.getvalue()


def schema_reference(schema_file: Path, spec_file: Path) -> str:
    """How `spec_file` names `schema_file` in its yaml-language-server line: relative when both are
    in the same repository (the folder above the schema's, as specs/quickstart.yaml does:
    ../schemas/tabula-spec.schema.json), so that it survives a move of the checkout; else absolute."""
    schema_file, spec_dir = Path(schema_file).resolve(), Path(spec_file).resolve().parent
    root = schema_file.parent.parent
    if spec_dir == root or root in spec_dir.parents:
        return Path(os.path.relpath(schema_file, spec_dir)).as_posix()
    return schema_file.as_posix()


def short_comment(description: str) -> str:
    """The first clause of a description, at most COMMENT_CHARS characters."""
    text = re.split(r"(?<=[a-z0-9)])[.;](\s|$)", description.strip(), maxsplit=1)[0].strip()
    return text if len(text) <= COMMENT_CHARS else text[: COMMENT_CHARS - 1].rstrip() + "…"


def _model_map(data: dict[str, Any], fields: list[FormField], indent: int) -> CommentedMap:
    out = CommentedMap()
    known = {f.name: f for f in fields}
    order = ["kind"] * ("kind" in data) + [f.name for f in fields if f.name in data and f.name != "kind"]
    order += [key for key in data if key not in known]
    for key in order:
        written = _value(data[key], known.get(key), indent + 2)
        if written is not _SKIP:
            out[key] = written
    # comments in one column per mapping, after the longest "key: value" that carries one
    widths = [len(str(key)) + 1 + (len(_scalar_text(value)) + 1 if _scalar_text(value) else 0) for key, value in out.items()]
    column = indent + min(max(widths, default=0), 40) + 2
    for key in out:
        form_field = known.get(key)
        if form_field is not None and form_field.description and key != "kind":
            out.yaml_add_eol_comment(short_comment(form_field.description), key, column=column)
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, (CommentedMap, CommentedSeq)) and not value.fa.flow_style():
        return ""
    if isinstance(value, (CommentedMap, CommentedSeq)):
        return str(dict(value) if isinstance(value, CommentedMap) else list(value))
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


_SKIP = object()


def _value(value: Any, form_field: FormField | None, indent: int) -> Any:
    if form_field is None or value is None:
        return value
    if form_field.widget == MODEL and isinstance(value, dict):
        if not value and not form_field.required:
            return _SKIP
        return _model_map(value, form_fields(form_field.model), indent)
    if form_field.widget == UNION and isinstance(value, dict):
        member = form_field.members.get(value.get("kind", default_kind(form_field.members)))
        return _model_map(value, form_fields(member), indent) if member else value
    if form_field.widget in (LIST, DICT) and form_field.item is not None:
        if form_field.widget == LIST and isinstance(value, list):
            seq = CommentedSeq(_flow_item(item, form_field.item) for item in value)
            return seq
        if isinstance(value, dict):
            out = CommentedMap()
            for key, item in value.items():
                out[key] = _flow_item(item, form_field.item)
            return out
    if isinstance(value, (list, dict)):
        return _flow(value)
    return value


def _flow_item(item: Any, form_field: FormField) -> Any:
    """A list item or dict entry: one flow mapping ({kind: length, min_chars: 64}) in schema order."""
    if not isinstance(item, dict):
        return item
    model = form_field.members.get(item.get("kind", default_kind(form_field.members))) if form_field.widget == UNION else form_field.model
    names = [f.name for f in form_fields(model)] if model else []
    ordered = [key for key in names if key in item] + [key for key in item if key not in names]
    return _flow({key: item[key] for key in ordered})


def _flow(value: Any) -> Any:
    if isinstance(value, dict):
        out = CommentedMap((key, _flow(item)) for key, item in value.items())
        out.fa.set_flow_style()
        return out
    if isinstance(value, list):
        seq = CommentedSeq(_flow(item) for item in value)
        seq.fa.set_flow_style()
        return seq
    return value
