"""Where the run stands against its budget: a bar, tokens and steps, elapsed and ETA, the stage."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..format import format_duration, format_tokens
from ..state import RunState


class ProgressPanel(Widget):
    """Three lines: the bar with its percentage; tokens, steps, elapsed, ETA; the curriculum stage."""

    DEFAULT_CSS = """
    ProgressPanel {
        height: 3;
        padding: 0 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._fraction: float | None = None
        self._counts = Text("")
        self._stage = Text("")

    def show(self, state: RunState, now: float) -> None:
        fraction = state.fraction_done()
        counts = Text(no_wrap=True, overflow="ellipsis")
        counts.append("tokens ", style="dim")
        counts.append(f"{format_tokens(state.tokens)} / {format_tokens(state.total_tokens)}")
        counts.append("   step ", style="dim")
        counts.append(f"{state.step} / {state.total_steps if state.total_steps is not None else '-'}")
        counts.append("   elapsed ", style="dim")
        counts.append(format_duration(state.elapsed(now)))
        counts.append("   ETA ", style="dim")
        counts.append(format_duration(state.eta(now)))
        stage = Text(no_wrap=True, overflow="ellipsis")
        stage.append("stage ", style="dim")
        stage.append(state.stage_label)
        stage.append("   seq_len ", style="dim")
        stage.append(str(state.seq_len or "-"))
        if state.mix:
            stage.append("   mix ", style="dim")
            stage.append(", ".join(f"{name} {weight:.2f}" for name, weight in state.mix.items()))
        if (fraction, counts.plain, stage.plain) == (self._fraction, self._counts.plain, self._stage.plain):
            return  # the same seconds and counts: nothing to repaint
        self._fraction, self._counts, self._stage = fraction, counts, stage
        self.refresh()

    def render(self) -> Text:
        width = max(10, self.size.width - 2)
        percent = "  -" if self._fraction is None else f"{100 * self._fraction:5.1f}%"
        bar_width = max(1, width - len(percent) - 1)
        done = round(bar_width * (self._fraction or 0.0))
        bar = Text(no_wrap=True)
        bar.append("━" * done, style="bold green")
        bar.append("━" * (bar_width - done), style="dim")
        bar.append(" " + percent, style="bold")
        return Text("\n").join([bar, self._counts, self._stage])
