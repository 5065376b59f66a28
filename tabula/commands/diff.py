"""Compare two experiments: what changed between their resolved specs.

A and B are spec files or run directories (then their resolved.yaml). The diff is semantic: it
compares the resolved specs (extends merged, defaults filled, 64k = 65536), so key order,
comments, quoting and number spelling never show. Each added (+), removed (-) or changed (~)
dotted path is listed under its section with old -> new; where the compiler can tell, the
impact follows (parameters, memory, steps, whether a run of A can resume under B).

Overrides after A and B (`a.b=v`, as on every command) apply to both sides: compare two specs as
they would run with the same change, e.g. at the same budget.

  tabula diff specs/quickstart.yaml specs/zero2.yaml
  tabula diff specs/quickstart.yaml specs/zero2.yaml train.budget.tokens=1M
  tabula diff runs/quickstart-20261128-101500 runs/quickstart-20261128-113000 --json

--json prints a list of {path, kind, old, new}.
Exit status: 0 when the specs are equal, 1 when they differ, 2 on bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HELP = "show what changed between two specs or run directories"

_COLOR = {"added": "\033[32m", "removed": "\033[31m", "changed": "\033[33m"}


def add_arguments(parser) -> None:
    from tabula.report import add_extends_flag

    parser.add_argument("a", metavar="A", help="a spec file or a run directory (its resolved.yaml)")
    parser.add_argument("b", metavar="B", help="a spec file or a run directory (its resolved.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="a.b=v",
                        help="overrides applied to both A and B, e.g. train.budget.tokens=1M (values are YAML)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {path, kind, old, new}")
    parser.add_argument("--no-impact", action="store_true",
                        help="only the changed paths: skip the compiler's estimate of each change's impact (faster)")
    add_extends_flag(parser)


def run(args) -> int:
    from tabula.report import print_errors
    from tabula.schemas.diff import diff_specs, group_by_section
    from tabula.schemas.errors import SpecError, SpecErrors
    from tabula.schemas.loader import load_spec
    from tabula.schemas.rundir_protocol import RESOLVED_FILE

    specs = []
    for given in (args.a, args.b):
        path = Path(given)
        if _is_dir(path):
            path = path / RESOLVED_FILE
            if not path.is_file():
                print_errors([SpecError(f"{given} is a directory without resolved.yaml: neither a spec file nor a run directory",
                                        file=given)])
                return 2
        try:
            specs.append(load_spec(path, args.overrides, allow_extends_outside=args.allow_extends_outside))
        except SpecErrors as raised:
            print_errors(raised.errors)
            return 2
    spec_a, spec_b = specs
    changes = diff_specs(spec_a, spec_b)
    impact = _impact(spec_a, spec_b, changes) if changes and not args.no_impact else None

    if args.json:
        print(json.dumps([change.as_dict() for change in changes], indent=2, default=str))
        return 1 if changes else 0

    from tabula.schemas.canonical import spec_hash

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(f"--- {args.a}  (spec {spec_hash(spec_a)[:12]})")
    print(f"+++ {args.b}  (spec {spec_hash(spec_b)[:12]})")
    if not changes:
        print("no differences: the resolved specs are equal")
        return 0
    groups = group_by_section(changes)
    for section, members in groups.items():
        print(f"\n{section}")
        for change in members:
            print("  " + _line(change, color))
            if isinstance(change.impact, str):
                print(f"      {change.impact}")
    count = len(changes)
    print(f"\n{count} change{'s' if count != 1 else ''} in {len(groups)} section{'s' if len(groups) != 1 else ''}")
    if impact is not None:
        lines = _safe_lines(impact)
        if lines:
            print()
            for text in lines:
                print(text)
    return 1


def _impact(spec_a, spec_b, changes) -> Any:
    """The compiler's annotation of the changes, where a compiler that provides it is installed.
    The diff itself never depends on it: any failure there leaves a note, never a traceback."""
    try:
        from tabula.compiler.impact import annotate
    except ImportError:
        return None
    try:
        return annotate(spec_a, spec_b, changes)
    except Exception as error:  # noqa: BLE001 - the diff stands without the estimate
        return _Note(f"(impact not available: {type(error).__name__}: {error})")


class _Note:
    def __init__(self, text: str):
        self.text = text

    def lines(self) -> list[str]:
        return [self.text]


def _safe_lines(impact: Any) -> list[str]:
    try:
        return list(impact.lines())
    except Exception as error:  # noqa: BLE001
        return [f"(impact not available: {type(error).__name__}: {error})"]


def _line(change, color: bool) -> str:
    text = change.line()
    return f"{_COLOR[change.kind]}{text}\033[0m" if color else text


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for a file name: load_spec says so
        return False
