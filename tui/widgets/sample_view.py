"""The latest greedy sample the run wrote after an evaluation."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..state import RunState


class SampleView(Static):
    """The prompt (dim) followed by the generated text."""

    DEFAULT_CSS = """
    SampleView {
        width: 1fr;
        height: 1fr;
        min-height: 3;
        border: round $primary-darken-2;
        border-title-color: $text-muted;
        padding: 0 1;
        overflow: hidden;
    }
    """

    def on_mount(self) -> None:
        self.border_title = "latest sample"

    _shown: tuple | None = ("", "")  # never a real sample: the first show() draws

    def show(self, state: RunState) -> None:
        if (state.sample_prompt, state.sample_text) == self._shown:
            return
        self._shown = (state.sample_prompt, state.sample_text)
        if state.sample_text is None:
            self.update(Text("no sample yet (one follows each evaluation)", style="dim"))
            return
        self.update(Text.assemble((state.sample_prompt or "", "dim"), state.sample_text))
