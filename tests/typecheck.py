"""Type-check the package `tabula` with mypy, configured by [tool.mypy] in pyproject.toml.

The source folders are renamed at install (package-dir: schemas/ -> tabula.schemas, ...) and the
editable install finds them through an import hook that mypy cannot follow. So mypy checks a tree
of symlinks in the import layout (.mypy_cache/layout/tabula/...), kept at a fixed place so that
mypy's cache (.mypy_cache/) stays warm between runs, and its messages are given back with the
repository's paths (schemas/spec.py, not tabula/schemas/spec.py).

Usage: python tests/typecheck.py [more mypy arguments]   (also `make typecheck`, tests/test_types.py)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache"
LAYOUT = CACHE / "layout"


def package_dirs() -> dict[str, str]:
    """The package -> folder map of [tool.setuptools] package-dir."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def link_tree() -> dict[str, str]:
    """(Re)make LAYOUT/tabula/... as symlinks into the repository; returns layout path -> repository path prefixes."""
    dirs = package_dirs()
    top = LAYOUT / "tabula"
    top.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in (ROOT / dirs.pop("tabula")).iterdir() if p.name != "__pycache__"}
    for package, folder in dirs.items():
        parent, _, name = package.partition(".")
        if parent != "tabula" or "." in name:
            raise ValueError(f"package-dir maps {package!r}; only tabula.<name> folders are laid out")
        wanted[name] = ROOT / folder
    for link in top.iterdir():
        if link.name not in wanted or not link.is_symlink() or link.readlink() != wanted[link.name]:
            link.unlink()
    for name, target in wanted.items():
        if not (top / name).is_symlink():
            (top / name).symlink_to(target)
    return {f"tabula/{package.partition('.')[2]}/": f"{folder}/" for package, folder in dirs.items()}


def run(args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs mypy over the package; the result's stdout holds its messages, with repository paths."""
    prefixes = link_tree()
    command = [
        sys.executable, "-m", "mypy",
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(CACHE),
        "-p", "tabula",
        *(args or []),
    ]
    result = subprocess.run(command, cwd=LAYOUT, capture_output=True, text=True)
    lines = []
    for line in result.stdout.splitlines():
        for layout_prefix, repo_prefix in prefixes.items():
            if line.startswith(layout_prefix):
                line = repo_prefix + line[len(layout_prefix):]
                break
        lines.append(line)
    result.stdout = "\n".join(lines) + ("\n" if lines else "")
    return result


def main() -> int:
    result = run(sys.argv[1:])
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
