"""The spec wizard screen: a form generated from the schema, live validation, a live plan, save.

The form is built by `wizard_form.root_widgets` from the pydantic model alone; edits land in a
`FormData` (plain dicts, as the YAML will be); after each edit (debounced) the data is validated
as `tabula validate` would, errors are shown on their fields and in a list, and a valid spec is
planned in a worker thread (the compiler imports torch; the screen stays responsive).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from .form_data import FormData
from .dialogs import REPLACE, ConfirmReplace
from .spec_yaml import dump_spec, schema_reference
from .widgets.collection_section import CollectionSection
from .widgets.error_list import ErrorList
from .widgets.field_row import FieldRow
from .widgets.model_section import ModelSection
from .widgets.plan_panel import PlanPanel
from .wizard_form import FormError, check, root_widgets

DEBOUNCE_S = 0.3
Planner = Callable[[Any], tuple[list[tuple[str, str]], list[str]]]


class WizardScreen(Screen[Path | None]):
    """Edits `data` against `model` and saves it to `output` (or `<name>.yaml`). Dismisses with the
    path saved last, or None."""

    DEFAULT_CSS = """
    WizardScreen {
        layout: vertical;
    }
    WizardScreen #title {
        height: 1;
        background: $panel;
        padding: 0 1;
        text-style: bold;
    }
    WizardScreen #body {
        layout: horizontal;
        height: 1fr;
    }
    WizardScreen #form {
        width: 1fr;
    }
    WizardScreen #side {
        width: 56;
        height: 1fr;
    }
    WizardScreen.-narrow #body {
        layout: vertical;
    }
    WizardScreen.-narrow #side {
        width: 1fr;
        height: auto;
        max-height: 40%;
    }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [Binding("ctrl+s", "save", "save"), Binding("ctrl+q", "app.quit", "quit")]

    def __init__(self, model: type[BaseModel], data: dict[str, Any], *, output: Path | None = None,
                 planner: Planner | None = None, source: str | None = None, header: str | None = None,
                 schema_file: Path | None = None, force: bool = False) -> None:
        """`schema_file`: the JSON schema the saved YAML names on its first line (for editors).
        `force`: replace a file that has content without asking."""
        super().__init__()
        self.model = model
        self.form = FormData(data)
        self.output = output
        self.planner = planner
        self.source = source
        self.header = header
        self.schema_file = schema_file
        self.force = force
        self.errors: list[FormError] = []
        self.saved: Path | None = None
        self._timer = None
        self._checked_version = -1

    def compose(self) -> ComposeResult:
        yield Static(self._title_text(), id="title", markup=False)
        with Vertical(id="body"):
            yield VerticalScroll(*root_widgets(self.model, self.form), id="form")
            with VerticalScroll(id="side"):
                yield ErrorList(id="errors")
                yield PlanPanel(id="plan")
        yield Footer()

    def _title_text(self) -> str:
        where = f"from {self.source}  ->  " if self.source else ""
        return f"tabula new: {where}{self.target_path()}   (ctrl+s save, ctrl+q quit)"

    def on_mount(self) -> None:
        self.validate()

    # ------------------------------------------------------------ validation, debounced

    def on_field_row_changed(self, _: FieldRow.Changed) -> None:
        self._schedule()

    def on_model_section_rebuilt(self, _: ModelSection.Rebuilt) -> None:
        self._schedule()

    def on_collection_section_rebuilt(self, _: CollectionSection.Rebuilt) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_S, self.validate)

    def validate(self) -> list[FormError]:
        """Check the form now: show errors on their fields and in the list; plan a valid spec."""
        self._timer = None
        self.errors = check(self.form.data, self.model)
        self._checked_version = self.form.version
        self.query_one(ErrorList).show_errors(
            [(e.dotted, e.message + (f" (did you mean `{e.hint}`?)" if e.hint else "")) for e in self.errors])
        self._mark_fields()
        self.query_one("#title", Static).update(self._title_text())
        plan = self.query_one(PlanPanel)
        if self.errors:
            plan.show_note("the plan follows once the spec is valid")
        elif self.planner is None:
            plan.display = False
        else:
            plan.show_note("planning ...")
            self._plan(self.model.model_validate(self.form.data))
        return self.errors

    def _mark_fields(self) -> None:
        widgets = {w.path: w for w in self.query("FieldRow, ModelSection, CollectionSection")}
        messages: dict[tuple, list[str]] = {}
        for error in self.errors:
            path = error.path
            while path and path not in widgets:  # an error inside a row shows on the row's section
                path = path[:-1]
            if path:
                shown = error.message if path == error.path else f"{'.'.join(map(str, error.path[len(path):]))}: {error.message}"
                messages.setdefault(path, []).append(shown)
        for path, widget in widgets.items():
            widget.show_error("; ".join(messages[path]) if path in messages else None)

    @work(thread=True, exclusive=True, group="plan")
    def _plan(self, spec: Any) -> None:
        version = self.form.version
        try:
            rows, notes = self.planner(spec)
        except Exception as error:  # noqa: BLE001 - a spec that validates but cannot be planned: show why
            messages = [e.message for e in getattr(error, "errors", [])] or [str(error)]
            self.app.call_from_thread(self._show_plan_problem, version, messages)
            return
        self.app.call_from_thread(self._show_plan, version, rows, notes)

    def _show_plan(self, version: int, rows, notes) -> None:
        if version == self.form.version:
            self.query_one(PlanPanel).show_rows(rows, notes)

    def _show_plan_problem(self, version: int, messages: list[str]) -> None:
        if version == self.form.version:
            self.query_one(PlanPanel).show_note("cannot plan: " + "; ".join(messages), style="bold yellow")

    # ------------------------------------------------------------ saving

    def target_path(self) -> Path:
        if self.output is not None:
            return self.output
        name = self.form.get(("name",), None)
        return Path(f"{name if isinstance(name, str) and name else 'experiment'}.yaml")

    def action_save(self) -> None:
        if self._checked_version != self.form.version or self._timer is not None:
            self.validate()
        if self.errors:
            first = self.errors[0]
            self.notify(f"Not saved: {len(self.errors)} error(s). {first.dotted}: {first.message}",
                        severity="error", title="invalid spec")
            return
        path = self.target_path()
        if not self.force and path != self.saved and _has_content(path):  # never replace someone's file unasked

            def answered(answer: str | None) -> None:
                if answer == REPLACE:
                    self._write(path)

            self.app.push_screen(ConfirmReplace(path), answered)
            return
        self._write(path)

    def _write(self, path: Path) -> None:
        schema = schema_reference(self.schema_file, path) if self.schema_file is not None else None
        text = dump_spec(self.form.data, self.model, header=self.header, schema=schema)
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
        except OSError as error:  # a folder named as the file, a read-only place: say so, keep the form
            temporary.unlink(missing_ok=True)
            self.notify(f"Not saved: cannot write {path}: {error.strerror or error}", severity="error",
                        title="cannot save")
            return
        self.saved = path
        self.notify(f"saved {path}", title="tabula new")

    def action_leave(self) -> None:
        self.dismiss(self.saved)


def _has_content(path: Path) -> bool:
    """Whether `path` is a file with something in it (an empty file is a place to write)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False
