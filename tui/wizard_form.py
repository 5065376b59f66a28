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
    hint: str | None = None  # the closest valid key or kind, for a typo

    @property
    def dotted(self) -> str:
        return ".".join(str(part) for part in self.path) or "(spec)"


def check(data: dict[str, Any], model: type[BaseModel]) -> list[FormError]:
    """Validate `data` against `model`; [] when valid. The errors are those `tabula validate`
    reports (the spec language's own conversion of pydantic's errors: spec paths, plain words,
    suggestions for typos), without file positions since the form has no file yet."""
    from tabula.schemas.pydantic_errors import spec_errors_from

    try:
        model.model_validate(data)
    except ValidationError as error:
        found = spec_errors_from(error, data, model, lambda path, key: None)
        return [FormError(tuple(e.path), e.message, e.suggestion) for e in found]
    return []
