"""The wizard's live plan: parameters, memory per rank, steps, as the compiler estimates them."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static


class PlanPanel(Static):
    """Rows of (label, value), or a note while there is nothing to show."""

    DEFAULT_CSS = """
    PlanPanel {
        height: auto;
        border: round $primary-darken-2;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    """

    def on_mount(self) -> None:
        self.border_title = "plan"

    def show_rows(self, rows: list[tuple[str, str]], notes: Sequence[str] = ()) -> None:
        width = max((len(label) for label, _ in rows), default=0) + 2
        text = Text()
        for label, value in rows:
            text.append(label.ljust(width), style="dim")
            text.append(value + "\n")
        for note in notes:
            text.append("note".ljust(width), style="dim")
            text.append(note + "\n", style="yellow")
        text.rstrip()
        self.update(text)

    def show_note(self, note: str, style: str = "dim") -> None:
        self.update(Text(note, style=style))
