"""A nested model of the wizard as a collapsible section; for a `kind` union, a Select that swaps
the section's fields; for an optional model, a switch that sets it or leaves it null."""

from __future__ import annotations

from typing import Any

from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Collapsible, Label, Select, Static, Switch

from ..form_data import MISSING
from ..schema_form import UNION, default_kind, form_fields
from .form_section import FormSection


class ModelSection(FormSection):
    """The fields of the model (or union member) at `path`, built from the schema and rebuilt
    when the kind changes or the section is switched on or off."""

    DEFAULT_CSS = """
    ModelSection {
        height: auto;
        padding: 0;
        margin: 0;
        border: none;
    }
    ModelSection > Contents {
        padding: 0 0 0 2;
        height: auto;
    }
    ModelSection .head {
        height: auto;
        padding: 0 0 0 1;
    }
    ModelSection .head Label {
        width: 24;
        padding: 0 1 0 0;
        text-style: bold;
    }
    ModelSection .head Select {
        width: 1fr;
        max-width: 60;
    }
    ModelSection .head Switch {
        border: none;
        height: 1;
        padding: 0 1;
    }
    ModelSection .section-help {
        color: $text-muted;
        padding-left: 1;
    }
    ModelSection .fields {
        height: auto;
    }
    ModelSection.-invalid > CollapsibleTitle {
        color: $error;
    }
    """

    class Rebuilt(Message):
        """The section's structure changed (kind swapped, switched on or off)."""

    # ------------------------------------------------------------ what the section holds now

    @property
    def is_set(self) -> bool:
        value = self.form.get(self.path)
        if value is MISSING:
            return not (self.form_field.nullable and self.form_field.default is None)
        return value is not None

    @property
    def kind(self) -> str | None:
        if self.form_field.widget != UNION:
            return None
        value = self.form.get(self.path)
        if isinstance(value, dict) and value.get("kind") in self.form_field.members:
            return value["kind"]
        default = self.form_field.default
        if isinstance(default, dict) and default.get("kind") in self.form_field.members:
            return default["kind"]
        if isinstance(value, dict) and "kind" not in value:  # a union whose default kind may be left out
            return default_kind(self.form_field.members)
        return None

    def _head(self):
        field = self.form_field
        if field.nullable:
            yield Label("set", classes="name")
            yield Switch(value=self.is_set, classes="set-switch")
        if field.widget == UNION and self.is_set:
            yield Label("kind *")
            kinds = list(field.members)
            yield Select([(kind, kind) for kind in kinds], value=self.kind or Select.NULL, allow_blank=self.kind is None,
                         prompt="choose a kind", classes="kind-select", compact=True)

    def _fields(self):
        from ..wizard_form import field_widget

        if not self.is_set:
            return []
        if self.form_field.widget == UNION:
            kind = self.kind
            if kind is None:
                return []
            member = self.form_field.members[kind]
            description = member.model_fields["kind"].description
            head = [Static(description, classes="section-help", markup=False)] if description else []
            return head + [field_widget(f, self.path + (f.name,), self.form) for f in form_fields(member, skip=("kind",))]
        return [field_widget(f, self.path + (f.name,), self.form) for f in form_fields(self.form_field.model)]

    def _children(self) -> list:
        widgets: list = []
        if self.form_field.description:
            widgets.append(Static(self.form_field.description, classes="section-help", markup=False))
        head = list(self._head())
        if head:
            widgets.append(Horizontal(*head, classes="head"))
        widgets.append(Vertical(*self._fields(), classes="fields"))
        return widgets

    # ------------------------------------------------------------ edits

    def on_select_changed(self, event: Select.Changed) -> None:
        if not event.select.has_class("kind-select") or event.select.parent.parent is not self.query_one(Collapsible.Contents):
            return
        event.stop()
        if event.value is Select.NULL or event.value == self.kind and isinstance(self.form.get(self.path), dict):
            return
        self.form.set(self.path, _swap_kind(self.form.get(self.path), event.value, self.form_field.members[event.value]))
        self.rebuild()

    def on_switch_changed(self, event: Switch.Changed) -> None:
        if not event.switch.has_class("set-switch") or event.switch.parent.parent is not self.query_one(Collapsible.Contents):
            return
        event.stop()
        if event.value == self.is_set:
            return
        if event.value:
            first = next(iter(self.form_field.members), None)
            self.form.set(self.path, {"kind": first} if self.form_field.widget == UNION else {})
        else:
            self.form.set(self.path, None)
        self.rebuild()

    def show_error(self, message: str | None) -> None:
        self.set_class(bool(message), "-invalid")


def _swap_kind(old: Any, kind: str, member) -> dict[str, Any]:
    """The new kind, keeping the values of fields the new kind has too (n_heads from mha to gqa)."""
    kept = {key: value for key, value in (old or {}).items() if key != "kind" and key in member.model_fields} if isinstance(old, dict) else {}
    return {"kind": kind, **kept}
