"""The wizard's form built from a pydantic model, and the spec's errors mapped back onto it.

`field_widget` picks the widget for a `FormField` (schema_form.py classifies it); nothing here
names a spec field. `check(data, model)` validates the form's data as `tabula validate` would and
returns each error with its spec path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .form_data import FormData
from .schema_form import DICT, LIST, MODEL, UNION, FormField, form_fields
from .widgets.collection_section import CollectionSection
from .widgets.field_row import FieldRow
from .widgets.model_section import ModelSection


def field_widget(form_field: FormField, path: tuple[Any, ...], form: FormData, *, collapsed: bool = True):
    """The widget editing `form_field` at `path` of `form`."""
    if form_field.widget in (MODEL, UNION):
        return ModelSection(form_field, path, form, collapsed=collapsed)
    if form_field.widget in (LIST, DICT):
        return CollectionSection(form_field, path, form, collapsed=collapsed)
    return FieldRow(form_field, path, form)


def root_widgets(model: type[BaseModel], form: FormData) -> list:
    """The top level of the form: the root model's fields, its sections folded (each is built
    when first opened, which keeps the wizard quick to start on a large schema)."""
    return [field_widget(f, (f.name,), form) for f in form_fields(model)]


@dataclass(frozen=True)
class FormError:
    path: tuple[Any, ...]
    message: str

    @property
    def dotted(self) -> str:
        return ".".join(str(part) for part in self.path) or "(spec)"


def check(data: dict[str, Any], model: type[BaseModel]) -> list[FormError]:
    """Validate `data` against `model`; [] when valid. Paths name the spec's keys (the union tags
    pydantic adds to its locations are dropped; cross-field checks point at their field)."""
    try:
        model.model_validate(data)
    except ValidationError as error:
        return [FormError(_spec_path(data, item), _message(item)) for item in error.errors(include_url=False)]
    return []


def _spec_path(data: Any, item: dict[str, Any]) -> tuple[Any, ...]:
    path: list[Any] = []
    node = data
    for part in item["loc"]:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # a discriminated union's tag, not a key of the spec
        path.append(part)
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
    extra = (item.get("ctx") or {}).get("field")
    if isinstance(extra, (list, tuple)):
        path.extend(extra)
    return tuple(path)


def _message(item: dict[str, Any]) -> str:
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if item["type"] == "missing":
        return "required: no value given"
    if item["type"] == "extra_forbidden":
        return "unknown key"
    if "input" in item and item["type"] not in ("spec_check",) and not isinstance(item["input"], (dict, list)):
        return f"{message}, found {item['input']!r}"
    return message
