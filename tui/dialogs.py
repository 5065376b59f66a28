"""The questions the apps ask: the dashboard's (confirm a stop; what to do with a run it started when
quitting) and the wizard's (replace a file that has content)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label
from textual.widgets.button import ButtonVariant

STOP, LEAVE, CANCEL, REPLACE = "stop", "leave", "cancel", "replace"


class _Question(ModalScreen[str]):
    DEFAULT_CSS = """
    _Question {
        align: center middle;
    }
    _Question > Vertical {
        width: 64;
        max-width: 100%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    _Question Label {
        width: 100%;
        margin-bottom: 1;
    }
    _Question Horizontal {
        height: auto;
        align-horizontal: center;
    }
    _Question Button {
        margin: 0 1;
        min-width: 10;
    }
    """
    BINDINGS = [Binding("escape,n", "answer('cancel')", "Cancel", show=False)]
    QUESTION = ""
    ANSWERS: list[tuple[str, str, ButtonVariant]] = []  # (answer, label, variant)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.QUESTION)
            with Horizontal():
                for answer, label, variant in self.ANSWERS:
                    yield Button(label, id=answer, variant=variant)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)


class ConfirmStop(_Question):
    """`s`: stop the run at its next step, after a checkpoint? Answers `stop` or `cancel`."""

    QUESTION = "Stop the run at its next step, after writing a checkpoint?"
    ANSWERS = [(STOP, "Stop (y)", "error"), (CANCEL, "Cancel (n)", "default")]
    BINDINGS = [Binding("y", "answer('stop')", "Stop", show=False)]


class QuitRun(_Question):
    """`q` on a run the dashboard started: answers `stop`, `leave` or `cancel`."""

    QUESTION = "The run is still training. Stop it with a checkpoint, or leave it running in the background?"
    ANSWERS = [(STOP, "Stop (s)", "error"), (LEAVE, "Leave running (l)", "primary"), (CANCEL, "Cancel (n)", "default")]
    BINDINGS = [Binding("s", "answer('stop')", "Stop", show=False), Binding("l", "answer('leave')", "Leave", show=False)]


class ConfirmReplace(_Question):
    """Saving over a file that has content (not saved by this wizard): answers `replace` or `cancel`."""

    ANSWERS = [(REPLACE, "Replace (y)", "error"), (CANCEL, "Cancel (n)", "default")]
    BINDINGS = [Binding("y", "answer('replace')", "Replace", show=False)]

    def __init__(self, path) -> None:
        super().__init__()
        self.QUESTION = f"{path} already exists and is not empty. Replace it with this spec?"
