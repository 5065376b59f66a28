"""A list of models (filters, curriculum stages) or a dict of named models (sources) in the wizard:
one sub-form a row, with buttons to add and remove rows."""

from __future__ import annotations

from typing import Any

from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Collapsible, Input, Label, Static

from ..form_data import MISSING
from ..schema_form import DICT, UNION
from .form_section import FormSection
from .model_section import ModelSection


class CollectionSection(FormSection):
    """Rows of `form_field.item` at `path` (a list, or a dict keyed by name)."""

    DEFAULT_CSS = """
    CollectionSection {
        height: auto;
        padding: 0;
        margin: 0;
        border: none;
    }
    CollectionSection > Contents {
        padding: 0 0 0 2;
        height: auto;
    }
    CollectionSection .row {
        height: auto;
        border-left: outer $primary-darken-2;
        margin-bottom: 1;
    }
    CollectionSection .row-head {
        height: auto;
        padding-left: 1;
    }
    CollectionSection .row-head Label {
        width: 24;
        padding: 0 1 0 0;
        text-style: bold;
    }
    CollectionSection .row-head Input {
        width: 1fr;
        max-width: 40;
    }
    CollectionSection Button {
        min-width: 10;
        margin-left: 1;
    }
    CollectionSection .section-help {
        color: $text-muted;
        padding-left: 1;
    }
    CollectionSection.-invalid > CollapsibleTitle {
        color: $error;
    }
    """

    class Rebuilt(Message):
        """Rows were added, removed or renamed."""

    @property
    def is_dict(self) -> bool:
        return self.form_field.widget == DICT

    def _items(self) -> list[Any]:
        """The row keys: names for a dict, indexes for a list (the default's, until edited)."""
        value = self.form.get(self.path)
        if value is MISSING and self.form_field.has_default:
            value = self.form_field.default
        if isinstance(value, dict) and self.is_dict:
            return list(value)
        if isinstance(value, list) and not self.is_dict:
            return list(range(len(value)))
        return []

    def _children(self) -> list:
        widgets: list = []
        if self.form_field.description:
            widgets.append(Static(self.form_field.description, classes="section-help", markup=False))
        for key in self._items():
            widgets.append(self._row(key))
        widgets.append(Button(f"add {'source' if self.is_dict else 'item'}", classes="add", variant="primary", compact=True))
        return widgets

    def _row(self, key: Any) -> Vertical:
        item = self.form_field.item
        assert item is not None
        head = [Label(f"{self.form_field.name} {key}" if not self.is_dict else "name *")]
        if self.is_dict:
            head.append(Input(value=str(key), classes="row-name", compact=True))
        head.append(Button("remove", classes="remove", variant="error", compact=True))
        section = ModelSection(item, self.path + (key,), self.form, title=f"{key}", collapsed=False)
        row = Vertical(Horizontal(*head, classes="row-head"), section, classes="row")
        row.row_key = key  # type: ignore[attr-defined]
        return row

    def _materialise(self) -> Any:
        """Store the default in the data before the first structural edit, so edits apply to it."""
        value = self.form.get(self.path)
        if value is MISSING:
            value = self.form_field.default if self.form_field.has_default else ({} if self.is_dict else [])
            value = dict(value) if self.is_dict else list(value)
            self.form.set(self.path, value)
        return value

    def _new_item(self) -> dict[str, Any]:
        item = self.form_field.item
        return {"kind": next(iter(item.members))} if item.widget == UNION else {}

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.has_class("add") and event.button.parent is self.query_one(Collapsible.Contents):
            event.stop()
            value = self._materialise()
            if self.is_dict:
                index = len(value) + 1
                while f"source{index}" in value:
                    index += 1
                self.form.set(self.path + (f"source{index}",), self._new_item())
            else:
                value.append(self._new_item())
                self.form.version += 1
            self.rebuild()
        elif event.button.has_class("remove") and event.button.parent.parent.parent is self.query_one(Collapsible.Contents):
            event.stop()
            self._materialise()
            self.form.delete(self.path + (event.button.parent.parent.row_key,))
            self.rebuild()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._rename(event.input)

    def on_input_blurred(self, event: Input.Blurred) -> None:
        self._rename(event.input)

    def _rename(self, field: Input) -> None:
        if not field.has_class("row-name") or field.parent.parent.parent is not self.query_one(Collapsible.Contents):
            return
        old = field.parent.parent.row_key
        new = field.value.strip()
        if new == old:
            return
        self._materialise()
        if self.form.rename(self.path + (old,), new):
            self.rebuild()
        else:
            self.app.notify(f"{new!r} cannot name a second entry", severity="warning")
            field.value = str(old)

    def show_error(self, message: str | None) -> None:
        self.set_class(bool(message), "-invalid")
