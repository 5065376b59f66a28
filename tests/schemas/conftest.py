"""Shared spec texts for the spec-language tests."""

from __future__ import annotations

import textwrap

import pytest

from schema_texts import MINIMAL  # noqa: F401 (re-exported for the tests)


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> the path of a new file under tmp_path."""

    def _write(name: str, text: str):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return _write
