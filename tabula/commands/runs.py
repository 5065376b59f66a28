"""List the runs under a folder (default: runs/) as a table: name, spec hash, status, tokens seen,
best validation loss, benchmark scores (from `tabula eval`), wall time and backend. DIR may also be
one run folder. Reads the run folders only (manifest.json, events.jsonl, eval/results.json): it works
while runs train and on runs copied from another machine.

  tabula runs
  tabula runs experiments/ --json

Exit status: 0, or 2 when DIR is no folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "list the runs under a folder: status, tokens, best val loss, benchmarks"


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", nargs="?", default="runs",
                        help="a folder of run folders (default: runs), or one run folder")
    parser.add_argument("--json", action="store_true", help="print a JSON list of the runs instead of the table")


def run(args) -> int:
    from tabula.runtime.evaluation.runs import find_runs, summarize_run

    root = Path(args.dir)
    if not root.is_dir():
        sys.stderr.write(f"tabula runs: error: {root} is not a folder\n")
        return 2
    summaries = [summarize_run(path) for path in find_runs(root)]
    if args.json:
        print(json.dumps([summary.as_dict() for summary in summaries], indent=2))
        return 0
    if not summaries:
        print(f"no runs in {root}")
        return 0
    for line in table_lines(summaries):
        print(line)
    return 0


def table_lines(summaries) -> list[str]:
    """The table's lines: a header, a rule and one row a run, columns padded to their widths."""
    from tabula.schemas.units import UNKNOWN, format_count, format_duration

    benchmarks = sorted({name for summary in summaries for name in summary.benchmarks})
    header = ["name", "spec", "status", "tokens", "best val", *benchmarks, "wall", "backend"]
    rows = []
    for s in summaries:
        tokens = format_count(s.tokens, binary=True)
        if s.total_tokens:
            tokens += f" / {format_count(s.total_tokens, binary=True)}"
        rows.append([s.name, (s.spec_hash or UNKNOWN)[:12], s.status, tokens,
                     f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else UNKNOWN,
                     *[_score(s.benchmarks.get(name)) for name in benchmarks],
                     format_duration(s.wall_seconds), s.backend or UNKNOWN])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _score(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
