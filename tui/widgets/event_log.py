"""The run's log: warnings, stage changes, checkpoints, errors, newest at the bottom."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from ..state import RunState

LEVEL_STYLES = {"info": "", "warning": "yellow", "error": "bold red"}


class EventLog(RichLog):
    """Appends the state's new log lines; never rewrites what it already shows."""

    DEFAULT_CSS = """
    EventLog {
        height: 8;
        border: round $primary-darken-2;
        border-title-color: $text-muted;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, max_lines=1000, **kwargs)
        self._written = 0

    def on_mount(self) -> None:
        self.border_title = "log"

    def show(self, state: RunState) -> None:
        new = state.log_total - self._written
        if new <= 0:
            return
        for line in list(state.log)[-min(new, len(state.log)):]:
            try:
                stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
            except (OverflowError, OSError, ValueError):  # a time stamp from another millennium
                stamp = "--:--:--"
            self.write(Text.assemble((stamp + " ", "dim"), (line.text, LEVEL_STYLES.get(line.level, ""))))
        self._written = state.log_total
