"""The package type-checks: mypy, configured by [tool.mypy] in pyproject.toml (strict on
tabula.schemas and tabula.compiler), over the package as it is imported (tests/typecheck.py).

Slow: a cold run (no .mypy_cache) reads torch's and pydantic's types, a few minutes on a small
machine; a warm one takes seconds."""

from __future__ import annotations

import pytest

import typecheck


@pytest.mark.slow
def test_the_package_type_checks() -> None:
    result = typecheck.run()
    assert result.returncode == 0, f"mypy found type errors (make typecheck):\n{result.stdout}{result.stderr}"
