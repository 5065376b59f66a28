"""Everything about the package is in pyproject.toml; this file only stamps the git commit a wheel
is built from into tabula/BUILD_COMMIT, so `tabula --version` can say it (tabula/version.py)."""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        import sys
        sys.path.insert(0, str(ROOT / "tabula"))  # version.py alone: importing the package needs its deps
        try:
            from version import git_commit  # type: ignore[import-not-found]
        finally:
            sys.path.pop(0)
        commit = os.environ.get("TABULA_BUILD_COMMIT") or git_commit(ROOT)
        if commit and not self.editable_mode:
            (Path(self.build_lib) / "tabula" / "BUILD_COMMIT").write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPyWithCommit})
