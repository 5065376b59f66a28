"""One field of the wizard: its name, the control its type picked, its help text and its error."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch

from ..form_data import MISSING, FormData, parse_text, show_value
from ..schema_form import CHOICE, SWITCH, FormField


class FieldRow(Vertical):
    """Edits the value at `path` in `form` with an Input (scalars, flow YAML), a Select (choices) or
    a Switch (booleans). Posts `FieldRow.Changed` after each edit."""

    DEFAULT_CSS = """
    FieldRow {
        height: auto;
        padding: 0 0 0 1;
    }
    FieldRow > Horizontal {
        height: auto;
    }
    FieldRow .name {
        width: 24;
        padding: 0 1 0 0;
        text-style: bold;
    }
    FieldRow Input, FieldRow Select {
        width: 1fr;
        max-width: 60;
    }
    FieldRow Switch {
        border: none;
        height: 1;
        padding: 0 1;
    }
    FieldRow .help {
        color: $text-muted;
        padding-left: 24;
        height: auto;
    }
    FieldRow .error {
        color: $error;
        text-style: bold;
        padding-left: 24;
        height: auto;
        display: none;
    }
    FieldRow.-invalid .error {
        display: block;
    }
    FieldRow.-invalid Input, FieldRow.-invalid Select {
        background: $error 30%;
    }
    """

    class Changed(Message):
        """A value was edited."""

        def __init__(self, row: FieldRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, form_field: FormField, path: tuple[Any, ...], form: FormData, *, label: str | None = None) -> None:
        super().__init__()
        self.form_field = form_field
        self.path = path
        self.form = form
        self.label = label or form_field.name

    def compose(self) -> ComposeResult:
        field = self.form_field
        with Horizontal():
            yield Label(self.label + (" *" if field.required else ""), classes="name")
            yield self._control()
        yield Static(field.description, classes="help", markup=False)
        yield Static("", classes="error", markup=False)

    def _control(self):
        field, current = self.form_field, self.form.get(self.path)
        if field.widget == SWITCH:
            value = current if isinstance(current, bool) else bool(field.default) if field.has_default else False
            return Switch(value=value)
        if field.widget == CHOICE:
            options = [(show_value(choice), index) for index, choice in enumerate(field.choices)]
            selected = next((i for i, c in enumerate(field.choices) if current is not MISSING and _same(c, current)), Select.NULL)
            prompt = f"default: {show_value(field.default)}" if field.has_default else "choose"
            return Select(options, value=selected, prompt=prompt, allow_blank=True, compact=True)
        placeholder = f"default: {show_value(field.default)}" if field.has_default else ("null" if field.nullable else "required")
        return Input(value="" if current is MISSING else show_value(current), placeholder=placeholder, compact=True)

    @property
    def control(self) -> Input | Select | Switch:
        return self.query_one("Input, Select, Switch")  # type: ignore[return-value]

    def _store(self, value: Any) -> None:
        current = self.form.get(self.path)
        if value is MISSING:
            if current is MISSING:
                return
            self.form.delete(self.path)
        elif current is not MISSING and _same(current, value):
            return
        else:
            self.form.set(self.path, value)
        self.post_message(self.Changed(self))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._store(parse_text(event.value, self.form_field))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._store(MISSING if event.value is Select.NULL else self.form_field.choices[event.value])

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._store(event.value)

    def show_error(self, message: str | None) -> None:
        """Show `message` under the field (None clears it); safe before the row has composed."""
        self.set_class(bool(message), "-invalid")
        for error in self.query(".error").results(Static):
            error.update(message or "")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
