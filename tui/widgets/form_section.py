"""A collapsible part of the wizard's form, for the schema node at a spec path: built when first
opened (a spec's whole schema is hundreds of widgets) and rebuilt when its structure changes."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Collapsible

from ..form_data import FormData
from ..schema_form import FormField


class FormSection(Collapsible):
    """Subclasses say what the section holds (`_children`) and define their own `Rebuilt` message,
    so that a screen tells a model's sections from a collection's."""

    class Rebuilt(Message):
        """The section's structure changed."""

    def __init__(self, form_field: FormField, path: tuple[Any, ...], form: FormData, *,
                 title: str | None = None, collapsed: bool = True) -> None:
        self.form_field = form_field
        self.path = path
        self.form = form
        super().__init__(title=title or form_field.name, collapsed=collapsed)

    def _children(self) -> list:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        self._built = not self.collapsed
        yield self._title
        with self.Contents():
            if self._built:
                yield from self._children()

    def on_collapsible_expanded(self, event: Collapsible.Expanded) -> None:
        if event.collapsible is self and not self._built:
            self._built = True
            self.rebuild()

    def rebuild(self) -> None:
        """Rebuild the contents from the form's data."""
        contents = self.query_one(Collapsible.Contents)
        contents.remove_children()
        contents.mount(*self._children())
        self.post_message(self.Rebuilt())
