"""Compare runs: their curves against training tokens, side by side, in the terminal and as a PNG,
and what differs between their specs (as `tabula diff` says it, each run against the first).

  tabula compare runs/quickstart-20261128-101500 runs/quickstart-20261128-113000
  tabula compare runs/a runs/b runs/c --metric val_loss --png compare.png

--metric: loss (training loss, the default), val_loss, val_ppl, lr, grad_norm, tokens_per_s, step_time,
mfu, memory. The PNG goes to --png (default: compare-<metric>.png in the working folder).
Exit status: 0, or 2 when a RUN is no run folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HELP = "plot runs' curves against tokens side by side and show how their specs differ"


def add_arguments(parser) -> None:
    from tabula.runtime.evaluation.runs import CURVES

    parser.add_argument("runs", metavar="RUN", nargs="+", help="run folders to compare (one or more)")
    parser.add_argument("--metric", default="loss", choices=CURVES,
                        help="the curve to plot against tokens (default: loss, the training loss)")
    parser.add_argument("--png", metavar="FILE", help="where to write the PNG (default: compare-<metric>.png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the terminal plot (the PNG is still written)")


def run(args) -> int:
    from tabula.runtime.evaluation.plots import png_plot, terminal_plot
    from tabula.runtime.evaluation.runs import curve, read_events
    from tabula.schemas.rundir_protocol import RESOLVED_FILE, is_run_folder

    folders = [Path(given) for given in args.runs]
    for folder in folders:
        if not is_run_folder(folder):
            sys.stderr.write(f"tabula compare: error: {folder} is not a run folder (no manifest.json, events.jsonl, ...)\n")
            return 2
    names = _legend_names(folders)
    series = {name: curve(read_events(folder), args.metric) for name, folder in zip(names, folders)}
    title = f"{_LABELS.get(args.metric, args.metric)} against training tokens"
    empty = [name for name, points in series.items() if not points]
    if empty:
        print(f"no {args.metric} points yet in: {', '.join(empty)}")
    if not args.no_plot and any(series.values()):
        width = min(shutil.get_terminal_size((100, 24)).columns, 140)
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(terminal_plot(series, title=title, xlabel="tokens", ylabel=args.metric, width=width, height=24, color=color,
                            tokens_axis=True))
    png = png_plot(series, args.png or f"compare-{args.metric}.png", title=title, xlabel="training tokens",
                   ylabel=_LABELS.get(args.metric, args.metric), tokens_axis=True)
    print(f"plot: {png}")
    for line in _spec_differences(folders, names, RESOLVED_FILE):
        print(line)
    return 0


_LABELS = {"loss": "training loss", "val_loss": "validation loss", "val_ppl": "validation perplexity",
           "lr": "learning rate", "grad_norm": "gradient norm", "tokens_per_s": "tokens per second",
           "step_time": "step time (s)", "mfu": "MFU", "memory": "memory (bytes)"}


def _legend_names(folders: list[Path]) -> list[str]:
    """Each run's folder name; made unique (with the parent folder) when two runs share it."""
    names = [folder.resolve().name for folder in folders]
    if len(set(names)) == len(names):
        return names
    return [f"{folder.resolve().parent.name}/{folder.resolve().name}" for folder in folders]


def _spec_differences(folders: list[Path], names: list[str], resolved: str) -> list[str]:
    """`tabula diff`'s lines for each run against the first (by their resolved.yaml)."""
    from tabula.schemas.diff import diff_specs, group_by_section
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec

    if len(folders) < 2:
        return []
    lines = []
    try:
        base = load_spec(folders[0] / resolved, allow_extends_outside=True)
    except (SpecErrors, OSError):
        return [f"\nspec differences: {names[0]} has no readable {resolved}"]
    for name, folder in zip(names[1:], folders[1:]):
        try:
            other = load_spec(folder / resolved, allow_extends_outside=True)
        except (SpecErrors, OSError):
            lines.append(f"\n{name}: no readable {resolved}")
            continue
        changes = diff_specs(base, other)
        lines.append(f"\n{names[0]} -> {name}: " + (f"{len(changes)} spec change{'s' if len(changes) != 1 else ''}"
                                                      if changes else "the same spec"))
        for section, members in group_by_section(changes).items():
            lines.append(f"  {section}")
            lines += [f"    {change.line()}" for change in members]
    return lines
