"""The one place spec errors become text for a person, and the helpers commands use to load a
spec given on the command line.

    file:line:col: error: path: message
       12 |     attention: {kind: gqa, n_heads: 8, n_kv_heads: 3}
          |                                                    ^
      expected: ...
      found: 3
      hint: did you mean `n_layers`?

Commands that take `SPEC [a.b=v ...]`:

    def add_arguments(parser):
        add_spec_arguments(parser)
    def run(args):
        spec = load_spec_or_report(args.spec, args.overrides)
        if spec is None:
            return 2
"""

from __future__ import annotations

import argparse

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, TextIO

if TYPE_CHECKING:
    from tabula.schemas.errors import SpecError
    from tabula.schemas.spec import Spec

_RED, _YELLOW, _CYAN, _BOLD, _DIM, _RESET = "\033[31m", "\033[33m", "\033[36m", "\033[1m", "\033[2m", "\033[0m"
_TOKEN_END = set(" ,}]:#\t")


def format_error(error: SpecError, color: bool = False) -> str:
    """One error as text: the `file:line:col: error: path: message` line, the source line with a
    caret under the spot, then `expected:`, `found:` and `hint:` lines where known."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    where = ":".join(str(part) for part in (error.file, error.line, error.column) if part is not None)
    head = paint(f"{_shorten(where)}: ", _BOLD) if where else ""
    path = paint(f"{_shorten(error.dotted_path)}: ", _BOLD) if error.path else ""
    lines = [f"{head}{paint('error:', _RED + _BOLD)} {path}{_shorten(error.message, 2000)}"]

    text = error.source_line if error.quote else None  # never a line of a file that is not a spec
    if text is None and error.quote and error.file and error.line:
        text = _read_line(error.file, error.line)
    if text is not None and error.line:
        number = str(error.line)
        shown = text.expandtabs(1)
        start = error.column - 1 if error.column else 0
        length = 1
        if error.column:
            in_override_path = (error.file or "").startswith("<override") and start < shown.find("=")
            length = _token_length(shown, start, stop=".=" if in_override_path else "")
        shown, start, length = _clip(shown, start, length)
        lines.append(f" {paint(number.rjust(4), _DIM)} | {shown}")
        if error.column:
            lines.append(f" {' ' * max(4, len(number))} | {' ' * start}{paint('^' + '~' * (length - 1), _RED)}")
    if error.expected:
        lines.append(f"  {paint('expected:', _CYAN)} {_shorten(error.expected, 1000)}")
    if error.found:
        lines.append(f"  {paint('found:', _CYAN)} {_shorten(error.found)}")
    if error.suggestion:
        lines.append(f"  {paint('hint:', _YELLOW)} did you mean `{_shorten(error.suggestion)}`?")
    return "\n".join(lines)


def _shorten(text: str, width: int = 200) -> str:
    """`text`, cut in the middle past `width` characters: a 3000-character key from the command line
    is not printed whole four times."""
    return text if len(text) <= width else f"{text[: width // 2]}...{text[-(width // 4):]}"


_EXCERPT_WIDTH = 100


def _clip(text: str, start: int, length: int) -> tuple[str, int, int]:
    """A long source line cut to about _EXCERPT_WIDTH characters around the caret (`...` marks
    the cuts); returns the text, the caret's new start and its length."""
    if len(text) <= _EXCERPT_WIDTH:
        return text, start, length
    begin = max(0, min(start - _EXCERPT_WIDTH // 3, len(text) - _EXCERPT_WIDTH))
    end = begin + _EXCERPT_WIDTH
    head, tail = ("..." if begin else ""), ("..." if end < len(text) else "")
    return head + text[begin:end] + tail, start - begin + len(head), max(1, min(length, end - start))


def print_errors(errors: Iterable[SpecError], stream: TextIO | None = None, color: bool | None = None) -> None:
    """Print every error (see format_error) to `stream` (default stderr), a blank line between
    them; color where the stream is a terminal and NO_COLOR is not set, unless `color` says."""
    stream = stream or sys.stderr
    if color is None:
        color = _use_color(stream)
    errors = list(errors)
    for index, error in enumerate(errors):
        if index:
            stream.write("\n")
        stream.write(format_error(error, color=color) + "\n")
    stream.flush()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a flag's bad value is one clear line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, found {value}")
    return value


def add_spec_arguments(parser, *, many: bool = False) -> None:
    """Add the positional `SPEC [a.b=v ...]` arguments: `args.spec` (a path; a list with many=True,
    where the specs and the overrides may come in any order: see split_spec_and_overrides) and
    `args.overrides` (a list of `a.b.c=value`), and --allow-extends-outside (add_extends_flag)."""
    add_extends_flag(parser)
    if many:
        parser.add_argument("items", nargs="+", metavar="SPEC|a.b=v",
                            help="spec files, then overrides a.b.c=value applied to each (values are YAML)")
    else:
        parser.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
        parser.add_argument("overrides", nargs="*", metavar="a.b=v",
                            help="overrides applied after extends, e.g. model.n_layers=2 data.curriculum.1.seq_len=1024 (values are YAML)")


def add_extends_flag(parser) -> None:
    """Add --allow-extends-outside (`args.allow_extends_outside`), for every command that loads specs."""
    parser.add_argument("--allow-extends-outside", action="store_true",
                        help="let extends: read specs outside the spec's folder and specs/ (refused by default)")


def split_spec_and_overrides(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Command-line items -> (spec paths, overrides). An item is an override when it has an `=`
    and is not an existing file; everything else is a spec path, in the order given."""
    specs, overrides = [], []
    for item in items:
        if "=" in item and not _exists(item):
            overrides.append(item)
        else:
            specs.append(item)
    return specs, overrides


def _exists(item: str) -> bool:
    try:
        return Path(item).exists()
    except (OSError, ValueError):  # longer than a file name may be, a NUL: no file, so an override
        return False


def load_spec_or_report(path: str | os.PathLike, overrides: Iterable[str] = (), stream: TextIO | None = None, *,
                        allow_extends_outside: bool = False) -> Spec | None:
    """load_spec(path, overrides, allow_extends_outside=...), or None after printing every error (see
    print_errors): the caller then exits with 2. Never raises for a bad spec, a missing file or a bad
    override."""
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec

    try:
        return load_spec(path, list(overrides), allow_extends_outside=allow_extends_outside)
    except SpecErrors as errors:
        print_errors(errors.errors, stream=stream)
        return None


def _use_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


def _read_line(file: str, line: int) -> str | None:
    try:
        with open(file, encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, start=1):
                if number == line:
                    return text.rstrip("\r\n")
    except OSError:
        return None
    return None


def _token_length(text: str, start: int, stop: str = "") -> int:
    """Length of the word starting at `start` (for the ~~~ under it): up to a YAML separator
    (or a character of `stop`); a quoted string to its closing quote."""
    if start >= len(text) or text[start] in "[{":
        return 1
    if text[start] in "'\"":
        end = text.find(text[start], start + 1)
        return end - start + 1 if end > start else 1
    end = start
    while end < len(text) and text[end] not in _TOKEN_END and text[end] not in stop:
        end += 1
    return max(1, end - start)
