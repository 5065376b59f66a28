"""`make bench`: runs every bench/bench_*.py in turn. Each prints ratios against a baseline
measured in the same invocation; nothing here is asserted.

    python bench/run.py            all benchmarks
    python bench/run.py model data only those whose name contains a word given
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    files = sorted(here.glob("bench_*.py"))
    if argv:
        files = [f for f in files if any(word in f.stem for word in argv)]
    failed = 0
    for path in files:
        print(f"== {path.stem} ==", flush=True)
        started = time.perf_counter()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            module.main()
        except Exception as error:  # one broken benchmark must not hide the others
            failed += 1
            print(f"   FAILED: {type(error).__name__}: {error}")
        print(f"   ({time.perf_counter() - started:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
