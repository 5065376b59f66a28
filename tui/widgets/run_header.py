"""The dashboard's top line: which run this is, where it runs, and whether it still does."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import format_count
from ..state import RunState

STATUS_STYLES = {
    "waiting": "bold yellow",
    "preparing data": "bold yellow",
    "running": "bold green",
    "stale": "bold yellow",
    "finished": "bold cyan",
    "stopped": "bold magenta",
    "failed": "bold red",
    "unreadable": "bold red",
}


class RunHeader(Static):
    """Run name, spec hash, backend x world size, device and precision, parameters (and what a fine-tuning
    method trains of them), status (with the error)."""

    DEFAULT_CSS = """
    RunHeader {
        height: auto;
        max-height: 2;
        background: $panel;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        padding: 0 1;
    }
    """

    _shown: tuple[str, str] | None = None

    def show(self, state: RunState, now: float) -> None:
        text, status = header_text(state, now)
        shown = (text.plain, status)
        if shown == self._shown:  # called every second for the clock: most seconds change nothing here
            return
        # a new layout (the whole screen) only when the header gains or loses its error line
        lines_changed = self._shown is None or self._shown[0].count("\n") != text.plain.count("\n")
        self._shown = shown
        self.update(text, layout=lines_changed)


def header_text(state: RunState, now: float) -> tuple[Text, str]:
    """The header's text (a second line for a failed run's error) and the status it shows."""
    status, detail = state.status(now)
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"● {status}", style=STATUS_STYLES.get(status, "bold"))
    if detail and status != "failed":  # waiting: what it prepares; stale or quiet: how long
        line.append(f" ({detail})", style="yellow")
    line.append("  ")
    line.append(state.run_name or "waiting for the run to start", style="bold")
    parts = []
    if state.spec_hash:
        parts.append(f"spec {state.spec_hash[:12]}")
    if state.backend:
        parts.append(f"{state.backend} × {state.world_size or 1}")
    if state.device:
        parts.append(" ".join(p for p in (state.device, state.precision) if p))
    if state.parameters:
        parts.append(f"{format_count(state.parameters)} params")
    if state.finetune:  # a fine-tuning method: what it trains of them
        trained = f"{format_count(state.trainable_parameters)} trained" if state.trainable_parameters is not None else "trained ?"
        parts.append(f"{state.finetune}: {trained}")
    for part in parts:
        line.append("  ·  ", style="dim")
        line.append(part)
    if status == "failed" and detail:
        return Text.assemble(line, "\n", Text(f"error: {detail}", style="bold red")), status
    return line, status
