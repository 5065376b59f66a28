"""One line chart of a metric against training tokens (textual-plotext)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from ..format import format_tokens
from ..state import Series

X_TICKS = 4


class MetricChart(PlotextPlot):
    """Plots one or more `Series` (label, series, color) against tokens; replots only when given new points."""

    DEFAULT_CSS = """
    MetricChart {
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, title: str, *, log_y: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.log_y = log_y
        self._drawn: tuple = ()
        self._version = 0
        self._cache: tuple[tuple, object] | None = None
        self._lines: list[tuple[str, Series, str]] = []

    def show(self, lines: list[tuple[str, Series, str]]) -> None:
        """Redraw with `lines` if any of them gained points since the last draw."""
        signature = tuple((label, len(series), series.xs[-1] if series.xs else None) for label, series, _ in lines)
        if signature == self._drawn:
            return
        self._drawn = signature
        self._lines = [(label, Series.copy(series), color) for label, series, color in lines]
        self._version += 1
        self.refresh()

    def render(self):
        # plotext rebuilds the whole canvas on every render, and Textual re-renders on any layout
        # change of the screen: build only when the data, the size or the theme changed, and
        # plot here, where the width the points are thinned to is known
        key = (self._version, self.size, self.app.theme)
        if self._cache is None or self._cache[0] != key:
            self._draw(self._lines)
            self._cache = (key, super().render())
        return self._cache[1]

    def _draw(self, lines: list[tuple[str, Series, str]]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        xs_all: list[float] = []
        for label, series, color in lines:
            if len(series) == 0:
                continue
            xs, ys = envelope(series.xs, series.ys, max(8, self.size.width))
            plt.plot(xs, ys, label=label if len(lines) > 1 else None, color=color, marker="braille")
            xs_all.extend((series.xs[0], series.xs[-1]))
        if self.log_y:
            plt.yscale("log")
        if xs_all:
            low, high = min(xs_all), max(xs_all)
            ticks = [low + (high - low) * i / (X_TICKS - 1) for i in range(X_TICKS)] if high > low else [low]
            plt.xticks(ticks, [format_tokens(int(t)) for t in ticks])  # one point: its one tick, not plotext's raw numbers


def envelope(xs: list[float], ys: list[float], buckets: int) -> tuple[list[float], list[float]]:
    """At most 2 * `buckets` points that draw like all of them: each run of consecutive points
    becomes its lowest and its highest, in x order, so spikes stay. plotext draws every segment
    (a braille cell holds 2 x-pixels), so more points than the chart's columns only cost time."""
    if len(xs) <= 2 * buckets:
        return xs, ys
    size = -(-len(xs) // buckets)  # ceil: points per bucket
    out_x, out_y = [], []
    for start in range(0, len(xs), size):
        chunk = range(start, min(start + size, len(xs)))
        low = min(chunk, key=ys.__getitem__)
        high = max(chunk, key=ys.__getitem__)
        for i in sorted({low, high}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y
