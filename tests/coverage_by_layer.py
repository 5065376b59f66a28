"""Line coverage per layer (schemas, compiler, runtime, tui, the CLI) from the .coverage file that
`make test` / `make coverage` leave: one table, weakest modules of each layer named.

    python tests/coverage_by_layer.py [--data .coverage] [--weakest N]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"schemas": "schemas", "compiler": "compiler", "runtime": "runtime", "tui": "tui", "tabula": "cli (tabula/)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / ".coverage"), help="the coverage data file")
    parser.add_argument("--weakest", type=int, default=3, help="modules named per layer, least covered first")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"no coverage data at {args.data}: run `make test` or `make coverage` first")
        return 1
    cov = coverage.Coverage(data_file=args.data)
    cov.load()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    modules: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for filename in cov.get_data().measured_files():
        path = Path(filename).resolve()
        if not path.is_relative_to(ROOT) or path.suffix != ".py":
            continue
        layer = path.relative_to(ROOT).parts[0]
        if layer not in LAYERS:
            continue
        _, statements, _, missing, _ = cov.analysis2(filename)
        totals[layer][0] += len(statements)
        totals[layer][1] += len(statements) - len(missing)
        if statements:
            modules[layer].append((1 - len(missing) / len(statements), len(missing), str(path.relative_to(ROOT))))
    print(f"{'layer':<15} {'statements':>10} {'covered':>8} {'cover':>6}   weakest modules")
    for layer, label in LAYERS.items():
        statements, covered = totals.get(layer, [0, 0])
        if not statements:
            continue
        weakest = ", ".join(f"{name} {share:.0%}" for share, _, name in sorted(modules[layer])[: args.weakest])
        print(f"{label:<15} {statements:>10} {covered:>8} {covered / statements:>6.0%}   {weakest}")
    statements = sum(t[0] for t in totals.values())
    covered = sum(t[1] for t in totals.values())
    print(f"{'all':<15} {statements:>10} {covered:>8} {covered / max(statements, 1):>6.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
