"""`tabula --version`: the package's version, and the git commit it was built from or runs from.

A wheel built from a checkout carries the commit in tabula/BUILD_COMMIT (written by setup.py's
build step); an editable install in a checkout asks git. A wheel built elsewhere has no commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

STAMP = "BUILD_COMMIT"


def git_commit(folder: Path) -> str | None:
    """`git describe --always --dirty` of the checkout holding `folder`, or None (no git, no checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_commit(package: Path = Path(__file__).resolve().parent) -> str | None:
    stamped = package / STAMP
    if stamped.is_file():
        return stamped.read_text().strip() or None
    checkout = package.parent
    # Only a checkout of tabula itself: a wheel installed into a venv that sits inside some other
    # repository must not report that repository's commit.
    if (checkout / "pyproject.toml").is_file() and (checkout / "schemas").is_dir():
        return git_commit(checkout)
    return None


def version_line() -> str:
    from tabula import __version__  # here, not at the top: setup.py imports this file alone

    commit = build_commit()
    return f"tabula {__version__}" + (f" (commit {commit})" if commit else "")
