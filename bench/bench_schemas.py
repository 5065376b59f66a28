"""The spec language's costs, as ratios against a baseline measured in the same run: how much
loading a spec (positions, extends, validation, error mapping) adds to merely parsing its YAML
with ruamel, and how long `tabula validate` takes as a fresh process against `python -c pass`."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def _per_call(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def _process(argv: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    from ruamel.yaml import YAML

    from tabula.schemas.canonical import spec_hash
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec

    text = QUICKSTART.read_text()
    compose = _per_call(lambda: YAML(typ="safe", pure=True).compose(io.StringIO(text)), 30)
    load = _per_call(lambda: load_spec(QUICKSTART), 30)
    spec = load_spec(QUICKSTART)
    digest = _per_call(lambda: spec_hash(spec), 100)
    broken = ROOT / "tests" / "schemas" / "broken" / "unknown_key.yaml"

    def load_broken():
        try:
            load_spec(broken)
        except SpecErrors:
            pass

    errors = _per_call(load_broken, 30)
    print(f"   ruamel compose (baseline)     {compose * 1e3:7.2f} ms")
    print(f"   load_spec quickstart          {load * 1e3:7.2f} ms  ({load / compose:.2f}x compose)")
    print(f"   load_spec with 2 errors       {errors * 1e3:7.2f} ms  ({errors / compose:.2f}x compose)")
    print(f"   spec_hash                     {digest * 1e3:7.2f} ms  ({digest / compose:.2f}x compose)")

    python = _process([sys.executable, "-c", "pass"])
    validate = _process([sys.executable, "-m", "tabula.cli", "validate", str(QUICKSTART)])
    print(f"   python -c pass (baseline)     {python:7.2f} s")
    print(f"   tabula validate quickstart    {validate:7.2f} s  ({validate / python:.1f}x bare python)")


if __name__ == "__main__":
    main()
