"""`tabula --version`'s commit: stamped into a built wheel, asked of git in a checkout of tabula, and
never taken from some other repository that happens to hold an installed copy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tabula.version import build_commit, git_commit, version_line


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository laid out as a tabula checkout: pyproject.toml, schemas/, tabula/."""
    root = tmp_path / "checkout"
    (root / "schemas").mkdir(parents=True)
    (root / "tabula").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'tabula'\n")
    (root / "tabula" / "__init__.py").write_text("")
    _git(root, "init", "-q")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    return root


def test_a_stamped_wheel_says_the_commit_it_was_built_from(tmp_path):
    package = tmp_path / "site-packages" / "tabula"
    package.mkdir(parents=True)
    (package / "BUILD_COMMIT").write_text("0123456789ab\n")
    assert build_commit(package) == "0123456789ab"


def test_a_checkout_of_tabula_asks_git_and_says_when_it_is_dirty(checkout):
    head = _git(checkout, "rev-parse", "--short=12", "HEAD")
    assert build_commit(checkout / "tabula") == head
    (checkout / "tabula" / "__init__.py").write_text("changed = True\n")
    assert build_commit(checkout / "tabula") == f"{head}-dirty"


def test_an_installed_copy_inside_another_repository_names_no_commit(checkout):
    # a venv inside some repository: site-packages/tabula's parent is no tabula checkout
    package = checkout / "venv" / "lib" / "site-packages" / "tabula"
    package.mkdir(parents=True)
    assert git_commit(package) is not None  # git would answer with that repository's commit ...
    assert build_commit(package) is None  # ... which is not tabula's


def test_outside_any_repository_git_commit_is_none(tmp_path):
    assert git_commit(tmp_path) is None


def test_the_version_line_names_the_package_version():
    from tabula import __version__

    assert version_line().startswith(f"tabula {__version__}")
