"""The wizard's validation errors, one a line with its spec path, as `tabula validate` words them."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class ErrorList(Static):
    """Shows `path: message` lines, or that the spec is valid."""

    DEFAULT_CSS = """
    ErrorList {
        height: auto;
        border: round $primary-darken-2;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    ErrorList.-invalid {
        border: round $error;
    }
    """

    def on_mount(self) -> None:
        self.border_title = "validation"

    def show_errors(self, errors: list[tuple[str, str]]) -> None:
        self.set_class(bool(errors), "-invalid")
        if not errors:
            self.update(Text("✓ the spec is valid: ctrl+s saves it", style="bold green"))
            return
        text = Text()
        text.append(f"✗ {len(errors)} error{'s' * (len(errors) != 1)}: saving is blocked\n", style="bold red")
        for path, message in errors:
            text.append(f"{path}: ", style="bold")
            text.append(message + "\n")
        text.rstrip()
        self.update(text)
