"""The numbers of the latest step: loss, perplexity, throughput, memory, checkpoints."""

from __future__ import annotations

from pathlib import PurePath

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..format import format_bytes, format_count, format_float, format_percent, format_rate, format_seconds
from ..state import RunState


class StatsPanel(Static):
    """A two-column table of the run's latest metrics."""

    DEFAULT_CSS = """
    StatsPanel {
        height: auto;
        border: round $primary-darken-2;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    """

    def on_mount(self) -> None:
        self.border_title = "stats"

    _rows: list[tuple[str, str]] | None = None

    def show(self, state: RunState) -> None:
        rows = stats_rows(state)
        if rows == self._rows:
            return
        self._rows = rows
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")
        for label, value in rows:
            style = "yellow" if label == "skipped" and state.skipped else ""
            table.add_row(label, Text(value, style=style))
        self.update(table, layout=False)  # a fixed number of rows


def stats_rows(state: RunState) -> list[tuple[str, str]]:
    """The panel's (label, value) rows, always the same labels."""
    loss = format_float(state.loss)
    if state.loss_ema is not None:
        loss += f"  (ema {format_float(state.loss_ema)})"
    val = format_float(state.val_loss)
    if state.best_val_loss is not None:
        val += f"  (best {format_float(state.best_val_loss)})"
    return [
        ("loss", loss),
        ("perplexity", format_float(state.perplexity)),
        ("val loss", val),
        ("lr", format_rate(state.lr)),
        ("grad norm", format_float(state.grad_norm, 3)),
        ("skipped", _skipped(state)),
        ("step time", format_seconds(state.step_time)),
        ("tokens/s", format_count(state.tokens_per_s)),
        ("MFU", format_percent(state.mfu)),
        ("memory", format_bytes(state.memory)),
        ("checkpoint", _short(state.last_checkpoint)),
        ("best ckpt", _short(state.best_checkpoint)),
    ] + _experts(state)


def _experts(state: RunState) -> list[tuple[str, str]]:
    """A mixture of experts' routing, once a routing event said it (no row for other models): the busiest
    expert's share over the uniform one, the balancing loss (both 1 when uniform), the busiest share."""
    if state.expert_imbalance is None:
        return []
    busiest = max((max(row) for row in state.expert_load or [] if row), default=None)
    shown = f"imbalance {format_float(state.expert_imbalance, 3)}x, balance loss {format_float(state.balance_loss, 3)}"
    return [("experts", shown + (f", busiest {format_percent(busiest)}" if busiest is not None else ""))]


def _skipped(state: RunState) -> str:
    """Updates refused as non-finite: '-' before a train event says, '0', or '3 of 120 steps'."""
    if state.skipped is None:
        return "-"
    if not state.skipped:
        return "0"
    return f"{state.skipped} of {state.step} steps" if state.step >= state.skipped else str(state.skipped)


def _short(path: str | None) -> str:
    return "-" if not path else PurePath(path).name
