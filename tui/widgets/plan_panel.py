"""The wizard's live plan: parameters, memory per rank, steps, as the compiler estimates them."""

from __future__ import annotations

from rich.table import Table
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

    def show_rows(self, rows: list[tuple[str, str]], notes: list[str] = ()) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        for label, value in rows:
            table.add_row(label, value)
        for note in notes:
            table.add_row("note", Text(note, style="yellow"))
        self.update(table)

    def show_note(self, note: str, style: str = "dim") -> None:
        self.update(Text(note, style=style))
