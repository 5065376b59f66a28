"""Curves drawn twice: as text for the terminal (plotext) and as a PNG (matplotlib, the Agg backend: no
display needed). Both get a title, labelled axes and a legend naming each series, so a plot reads at a
glance on its own. Torch-free; the caller prints the text."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tabula.schemas.units import format_count

Series = Mapping[str, Sequence[tuple[float, float]]]  # legend name -> (x, y) points


_MARKERS = ("•", "x", "+", "o", "*", "#")  # without colour, each series is told apart by its marker


def terminal_plot(series: Series, *, title: str, xlabel: str, ylabel: str, log_x: bool = False,
                  width: int = 100, height: int = 24, marks: dict[str, float] | None = None,
                  color: bool = False, tokens_axis: bool = False) -> str:
    """The curves as text, `width` x `height` characters: coloured series with `color` (a terminal), else
    plain characters, one marker a series. `marks`: vertical lines at x (label -> x), e.g. a suggestion."""
    import plotext as plt

    plt.clear_figure()
    plt.theme("pro" if color else "clear")
    plt.plotsize(width, height)
    for index, (name, points) in enumerate(series.items()):
        if points:
            xs, ys = zip(*points)
            marker = "braille" if color else _MARKERS[index % len(_MARKERS)]
            plt.plot(list(xs), list(ys), label=name, marker=marker)
    for name, x in (marks or {}).items():
        plt.vertical_line(x)
        plt.text(name, x=x, y=_top(series))
    if log_x:
        plt.xscale("log")
    every_x = [x for points in series.values() for x, _ in points]
    if tokens_axis and every_x:
        ticks = [min(every_x) + (max(every_x) - min(every_x)) * i / 4 for i in range(5)]
        plt.xticks(ticks, [format_count(tick, binary=True) for tick in ticks])
    plt.title(title)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    text = plt.build()
    plt.clear_figure()
    return text if color else plt.uncolorize(text)


def png_plot(series: Series, path: str | Path, *, title: str, xlabel: str, ylabel: str, log_x: bool = False,
             tokens_axis: bool = False, marks: dict[str, float] | None = None) -> Path:
    """Write the curves as a PNG at `path` (folders created) and return it. `tokens_axis`: x tick labels
    as token counts (`512k`, `1.5M`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(9, 5.5), dpi=110)
    axes = figure.add_subplot()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, label=name, linewidth=1.6, marker="." if len(points) < 40 else None)
    for name, x in (marks or {}).items():
        axes.axvline(x, linestyle="--", linewidth=1.0, color="grey")
        axes.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                      fontsize=8, color="dimgrey")
    if log_x:
        axes.set_xscale("log")
    if tokens_axis:
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_count(value, binary=True)))
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if any(series.values()):
        axes.legend(loc="best", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _top(series: Series) -> float:
    values = [y for points in series.values() for _, y in points]
    return max(values) if values else 1.0
