"""Errors in a spec, as values: what is wrong, at which spec path, and where in which file.

They travel as `SpecErrors` (one exception holding every error found) until the CLI prints them
with `tabula.report`; nothing below the CLI turns them into text for the user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class SpecError:
    """One problem in a spec.

    `path` is the spec path as a tuple (`("model", "block", "attention", "n_kv_heads")`, list
    indices as ints); `file`, `line` and `column` (1-based) say where it was written, or are None
    where no position is known (a value the spec left to its default). `expected`, `found` and
    `suggestion` (the closest valid key or kind, for a typo) are short phrases or None.
    `source_line` is the text of that line, kept for files that are not on disk (overrides,
    strings). `quote` is False for an error about a file that is not a spec: none of its lines is
    ever shown (an `extends:` or a command pointed at /etc/passwd must not print the file)."""

    message: str
    path: tuple[Any, ...] = ()
    file: str | None = None
    line: int | None = None
    column: int | None = None
    expected: str | None = None
    found: str | None = None
    suggestion: str | None = None
    source_line: str | None = None
    quote: bool = True

    @property
    def dotted_path(self) -> str:
        """The path as the user writes it in an override: `data.curriculum.1.seq_len`."""
        return ".".join(str(part) for part in self.path)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (`path` dotted), as `tabula validate --json` prints it."""
        data = asdict(self)
        data["path"] = self.dotted_path
        data.pop("source_line")
        data.pop("quote")
        return data

    def __str__(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line, self.column) if part is not None)
        prefix = f"{where}: " if where else ""
        path = f"{self.dotted_path}: " if self.path else ""
        return f"{prefix}{path}{self.message}"


class SpecErrors(Exception):
    """Every error found in a spec (at least one), in the order of the file where known."""

    def __init__(self, errors: Iterable[SpecError]):
        self.errors: list[SpecError] = list(errors)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)
