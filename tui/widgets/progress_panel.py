"""Where the run stands against its budget: a bar, tokens and steps, elapsed and ETA, the stage.

Before the run's first event (a new run prepares its data before its folder exists) the bar shows the
data preparation instead, in another colour, from the launched training's output lines."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..format import format_count, format_duration, format_tokens
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
        self._preparing = False
        self._counts = Text("")
        self._stage = Text("")

    def show(self, state: RunState, now: float) -> None:
        fraction, preparing, counts, stage = progress_texts(state, now)
        if (fraction, preparing, counts.plain, stage.plain) == (self._fraction, self._preparing, self._counts.plain, self._stage.plain):
            return  # the same seconds and counts: nothing to repaint
        self._fraction, self._preparing, self._counts, self._stage = fraction, preparing, counts, stage
        self.refresh()

    def render(self) -> Text:
        width = max(10, self.size.width - 2)
        percent = "  -" if self._fraction is None else f"{100 * self._fraction:5.1f}%"
        bar_width = max(1, width - len(percent) - 1)
        done = round(bar_width * (self._fraction or 0.0))
        bar = Text(no_wrap=True)
        bar.append("━" * done, style="bold yellow" if self._preparing else "bold green")
        bar.append("━" * (bar_width - done), style="dim")
        bar.append(" " + percent, style="bold")
        return Text("\n").join([bar, self._counts, self._stage])


def progress_texts(state: RunState, now: float) -> tuple[float | None, bool, Text, Text]:
    """(the bar's fraction, whether it is the data preparation's, the counts line, the stage line)."""
    stage = Text(no_wrap=True, overflow="ellipsis")
    stage.append("stage ", style="dim")
    stage.append(state.stage_label)
    stage.append("   seq_len ", style="dim")
    stage.append(str(state.seq_len or "-"))
    if state.mix:
        stage.append("   mix ", style="dim")
        seen = state.tokens_seen or {}
        stage.append(", ".join(f"{name} {weight:.2f}" + (f" ({format_tokens(seen[name])})" if name in seen else "")
                               for name, weight in state.mix.items()))
    counts = Text(no_wrap=True, overflow="ellipsis")
    if state.prepare is not None and state.last_time is None:
        step, done, total = state.prepare
        counts.append("preparing data ", style="dim")
        counts.append(f"{step}  {format_count(done)}" + (f" / {format_count(total)}" if total else ""))
        return state.fraction_prepared(), True, counts, stage
    counts.append("tokens ", style="dim")
    counts.append(f"{format_tokens(state.tokens)} / {format_tokens(state.total_tokens)}")
    counts.append("   step ", style="dim")
    counts.append(f"{state.step} / {state.total_steps if state.total_steps is not None else '-'}")
    counts.append("   elapsed ", style="dim")
    counts.append(format_duration(state.elapsed(now)))
    counts.append("   ETA ", style="dim")
    counts.append(format_duration(state.eta(now)))
    return state.fraction_done(), False, counts, stage
