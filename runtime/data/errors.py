"""Data errors as values: what went wrong, with which source and which spec path.

Raised by the data pipeline and caught by the CLI, which prints one line and exits with 2;
a user never sees a traceback for a missing file or a malformed record."""

from __future__ import annotations

from typing import Any

from ..errors import TabulaError


class DataError(TabulaError):
    """Bad data input: `message`, the `source` it concerns (or None) and the spec `path`
    (a tuple such as ("data", "sources", "corpus")) that points at the cause."""

    def __init__(self, message: str, *, source: str | None = None, path: tuple[Any, ...] = ()):
        super().__init__(message)
        self.message = message
        self.source = source
        self.path = path or (("data", "sources", source) if source else ())

    @property
    def dotted_path(self) -> str:
        """The spec path as an override writes it: data.filters.1, data.sources.corpus."""
        return ".".join(str(part) for part in self.path)

    def __str__(self) -> str:
        return f"{self.dotted_path}: {self.message}" if self.path else self.message
