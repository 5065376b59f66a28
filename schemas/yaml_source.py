"""Safe YAML reading that keeps positions: text -> plain Python values + where each one was written.

ruamel.yaml only *composes* the node tree here (nothing is constructed, so no tag can make it
create an object or run code); this module builds dicts, lists and YAML 1.2 core scalars from the
nodes itself and rejects every other tag. Each value's and each key's position is recorded under
its spec path, so later errors (pydantic's, cross-field checks) can point at file:line:column.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scanner import Scanner

from .errors import SpecError, SpecErrors

_TAG = "tag:yaml.org,2002:"
_MAX_NODES = 200_000  # aliases can multiply a small file (a "billion laughs"); a spec is never this big
_MAX_DEPTH = 64  # a spec nests about 6 deep; far deeper is a mistake (and would exhaust Python's stack)
# A spec is a few kB. A file far larger is a mistake (a data file, a log, /dev/zero): it is refused
# after reading at most this much, before any parsing. The pure-Python reader takes seconds per
# 100,000 values, so this also bounds the time to any error at a few seconds.
MAX_SPEC_BYTES = 256 * 1024


@dataclass(frozen=True)
class Position:
    """Where something was written: file as shown to the user, 1-based line and column."""

    file: str
    line: int
    column: int


@dataclass
class Document:
    """One parsed YAML text: its plain `data`, and positions by spec path (tuples of keys and
    list indices) of each value (`values`) and each mapping key (`keys`)."""

    file: str
    lines: list[str]
    data: Any = None
    values: dict[tuple[Any, ...], Position] = field(default_factory=dict)
    keys: dict[tuple[Any, ...], Position] = field(default_factory=dict)
    # set on an override's layer: the path it replaced whole, so nothing at or below it comes
    # from a lower layer even where its value is a mapping (`train.budget={tokens_per_param: 20}`)
    replaces: tuple[Any, ...] | None = None

    def line_text(self, line: int) -> str | None:
        """The text of a 1-based line, without its newline."""
        return self.lines[line - 1] if 0 < line <= len(self.lines) else None


def read_yaml(path: str | Path, *, shown_as: str | None = None, require_mapping: bool = True) -> Document:
    """Parse the YAML file at `path`; raises SpecErrors (missing file, YAML problems, tags...)."""
    shown = shown_as or str(path)
    return parse_yaml(read_text(path, shown_as=shown), shown, require_mapping=require_mapping)


def read_text(path: str | os.PathLike[str], *, shown_as: str | None = None) -> str:
    """The UTF-8 text of the regular file at `path` (newlines as `\\n`), read only as far as
    MAX_SPEC_BYTES. Raises SpecErrors with one line for a missing file, a directory, a device, pipe
    or socket (never read: /dev/zero has no end, a FIFO blocks), a file too large for a spec, text
    that is not UTF-8, and any other OSError."""
    shown = shown_as or str(path)

    def fail(message: str, **details: Any) -> SpecErrors:
        return SpecErrors([SpecError(message, file=shown, **details)])

    try:
        # O_NONBLOCK: opening a FIFO waits for a writer otherwise; it changes nothing for a file
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        # `tabula validate spec.yaml model.n_layers` meant an override without its value
        looks_like_path = "." in shown and not any(c in shown for c in "/\\") and not shown.endswith((".yaml", ".yml"))
        raise fail(f"no such file: {shown}", suggestion=f"{shown}=VALUE" if looks_like_path else None) from None
    except IsADirectoryError:
        raise fail(f"{shown} is a directory, not a spec file") from None
    except OSError as error:
        raise fail(f"cannot read {shown}: {error.strerror}") from None
    except ValueError:  # a NUL in the name
        raise fail(f"cannot read {shown!r}: a file name has no NUL character") from None
    try:
        mode = os.fstat(handle).st_mode
        if stat.S_ISDIR(mode):
            raise fail(f"{shown} is a directory, not a spec file")
        if not stat.S_ISREG(mode):
            raise fail(f"{shown} is not a regular file (a device, a pipe or a socket): a spec is a YAML file")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(handle, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise fail(f"cannot read {shown}: {error.strerror}") from None
    finally:
        os.close(handle)
    if size > MAX_SPEC_BYTES:
        raise fail(f"{shown} is larger than {MAX_SPEC_BYTES // 1024} KiB: too large for a spec (a spec is a few kB of YAML)")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as error:
        raise fail(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as open() reads text: universal newlines


def parse_yaml(text: str, file: str = "<string>", *, require_mapping: bool = True,
               line_offset: int = 0, column_offset: int = 0, source_lines: list[str] | None = None) -> Document:
    """Parse YAML `text` shown to the user as `file`; raises SpecErrors listing every problem.

    `require_mapping`: the document must be a mapping (a spec), not a list or a scalar.
    Offsets shift the recorded positions (a value cut out of a longer line, as an override is);
    `source_lines` are the lines shown in excerpts instead of `text`'s."""
    if len(text) > MAX_SPEC_BYTES:  # text given in code or an override: the same bound as a file
        raise SpecErrors([SpecError(f"{len(text):,} characters: too large for a spec (at most {MAX_SPEC_BYTES:,})",
                                    file=file, line=1 + line_offset, column=1 + column_offset, quote=False)])
    doc = Document(file=file, lines=source_lines if source_lines is not None else _lines(text))
    builder = _Builder(doc, line_offset, column_offset)

    tab_errors = builder.tabs_in_indentation(text)
    if tab_errors:
        raise SpecErrors(tab_errors)
    yaml = YAML(typ="safe", pure=True)
    yaml.Scanner = _Scanner
    try:
        root = yaml.compose(io.StringIO(text))
    except _TooDeep as error:
        raise SpecErrors([builder.error_at_mark(error.problem_mark, f"the YAML is nested too deeply (more than {_MAX_DEPTH} levels)")]) from None
    except MarkedYAMLError as error:
        raise SpecErrors([builder.syntax_error(error)]) from None
    except YAMLError as error:
        raise SpecErrors([builder.reader_error(error, text)]) from None
    except RecursionError:  # ruamel composes recursively: thousands of nested [ or { exhaust the stack
        raise SpecErrors([builder.too_deep_in_text(text)]) from None

    if root is None:
        if require_mapping:
            raise SpecErrors([SpecError(
                "the file is empty (or only comments): not a tabula spec, which is a mapping of keys (name, model, data, train, ...)",
                file=file, line=1 + line_offset, column=1 + column_offset,
                expected="a mapping", found="an empty document", quote=False)])
        doc.data = None
        return doc
    if require_mapping and not isinstance(root, MappingNode):
        # what the file holds is not shown: a text that is not a spec may be anything (/etc/passwd)
        found = "a list" if isinstance(root, SequenceNode) else "a single value"
        where = builder.position(root)
        raise SpecErrors([SpecError(
            f"a spec is a mapping of keys (name, model, data, train, ...), found {found}: not a tabula spec",
            file=file, line=where.line, column=where.column, expected="a mapping", found=found, quote=False)])
    doc.data = builder.build(root, ())
    if builder.errors:
        raise SpecErrors(builder.errors)
    return doc


class _TooDeep(MarkedYAMLError):
    pass


class _Scanner(Scanner):
    """ruamel's scanner, refusing `[` and `{` nested deeper than _MAX_DEPTH as it meets them: its
    work for each bracket grows with the nesting, so 20,000 `[` would scan for hours."""

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: Any) -> None:
        if len(self.flow_context) >= _MAX_DEPTH:
            raise _TooDeep(problem="nested too deeply", problem_mark=self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


class _Builder:
    """Turns composed nodes into plain values, recording positions and collecting errors."""

    def __init__(self, doc: Document, line_offset: int, column_offset: int):
        self.doc, self.line_offset, self.column_offset = doc, line_offset, column_offset
        self.errors: list[SpecError] = []
        self.nodes = 0
        self.active: set[int] = set()  # containers being built: an alias back into one is a cycle

    def position(self, node: Node) -> Position:
        mark = node.start_mark
        column = mark.column + 1 + (self.column_offset if mark.line == 0 else 0)
        return Position(self.doc.file, mark.line + 1 + self.line_offset, column)

    def error(self, node: Node, message: str, path: tuple[Any, ...], **details: Any) -> SpecError:
        where = self.position(node)
        return SpecError(message, path=path, file=where.file, line=where.line, column=where.column,
                         source_line=self.doc.line_text(node.start_mark.line + 1), **details)

    def error_at_mark(self, mark: Any, message: str) -> SpecError:
        column = mark.column + 1 + (self.column_offset if mark.line == 0 else 0)
        return SpecError(message, file=self.doc.file, line=mark.line + 1 + self.line_offset, column=column,
                         source_line=self.doc.line_text(mark.line + 1))

    def syntax_error(self, error: MarkedYAMLError) -> SpecError:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        message = f"YAML syntax error: {problem}"
        if error.context and error.problem:
            started = error.context_mark
            if started is not None and (started.line, started.column) != (mark.line if mark else -1, mark.column if mark else -1):
                message += f" ({error.context} that starts at line {started.line + 1 + self.line_offset})"
            else:
                message += f" ({error.context})"
        if mark is None:
            return SpecError(message, file=self.doc.file)
        column = mark.column + 1 + (self.column_offset if mark.line == 0 else 0)
        return SpecError(message, file=self.doc.file, line=mark.line + 1 + self.line_offset, column=column,
                         source_line=self.doc.line_text(mark.line + 1))

    def reader_error(self, error: YAMLError, text: str) -> SpecError:
        # ruamel's reader refuses control characters before any mark exists; it gives an offset
        position, character = getattr(error, "position", None), getattr(error, "character", None)
        if not isinstance(position, int) or not 0 <= position <= len(text):
            return SpecError(f"YAML error: {error}", file=self.doc.file)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
        return SpecError(f"a character YAML does not allow ({shown}); specs are printable text",
                         file=self.doc.file, line=line + self.line_offset,
                         column=column + (self.column_offset if line == 1 else 0),
                         found=shown, source_line=self.doc.line_text(line))

    def tabs_in_indentation(self, text: str) -> list[SpecError]:
        errors = []
        for number, line in enumerate(_lines(text), start=1):
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            if "\t" in indent and line.strip():
                errors.append(SpecError(
                    "a tab in the indentation; YAML indents with spaces only",
                    file=self.doc.file, line=number + self.line_offset, column=indent.index("\t") + 1,
                    expected="spaces", found="a tab character", source_line=self.doc.line_text(number)))
        return errors

    def too_deep_in_text(self, text: str) -> SpecError:
        """The error for a text nested too deeply to compose, at the first bracket past the limit
        (quotes are not skipped: this only places the caret of an error already certain)."""
        depth = 0
        for number, line in enumerate(_lines(text), start=1):
            for column, character in enumerate(line, start=1):
                depth += (character in "[{") - (character in "]}")
                if depth > _MAX_DEPTH:
                    return SpecError(f"the YAML is nested too deeply (more than {_MAX_DEPTH} levels)",
                                     file=self.doc.file, line=number + self.line_offset,
                                     column=column + (self.column_offset if number == 1 else 0),
                                     source_line=self.doc.line_text(number))
        return SpecError(f"the YAML is nested too deeply (more than {_MAX_DEPTH} levels)", file=self.doc.file)

    def build(self, node: Node, path: tuple[Any, ...]) -> Any:
        if len(path) > _MAX_DEPTH:
            self.errors.append(self.error(node, f"the YAML is nested too deeply (more than {_MAX_DEPTH} levels)", path))
            return None
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            if self.nodes == _MAX_NODES + 1:
                self.errors.append(self.error(node, f"the document expands to more than {_MAX_NODES} values (aliases?)", path))
            return None
        self.doc.values[path] = self.position(node)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.errors.append(self.error(node, "an alias refers to a value that contains it (a cycle)", path))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _TAG + "seq":
                    self.errors.append(self.bad_tag(node, path))
                return [self.build(item, path + (index,)) for index, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        self.errors.append(self.error(node, "unsupported YAML node", path))
        return None

    def mapping(self, node: MappingNode, path: tuple[Any, ...]) -> dict[str, Any]:
        if node.tag != _TAG + "map":
            self.errors.append(self.bad_tag(node, path))
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.errors.append(self.error(key_node, "a key must be a plain name, not a list or a mapping", path))
                continue
            if key_node.tag == _TAG + "merge":
                self.errors.append(self.error(
                    key_node, "merge keys (<<) are not supported; compose specs with extends:", path + ("<<",)))
                continue
            key = self.scalar(key_node, path)
            key = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
            if key in result:
                first = self.doc.keys[path + (key,)]
                self.errors.append(self.error(
                    key_node, f"duplicate key {key!r} (first written at line {first.line})", path + (key,),
                    found=f"{key!r} twice"))
                continue
            self.doc.keys[path + (key,)] = self.position(key_node)
            result[key] = self.build(value_node, path + (key,))
        return result

    def bad_tag(self, node: Node, path: tuple[Any, ...]) -> SpecError:
        tag = node.tag or ""  # composed nodes always carry a tag; ruamel types it Optional
        shown = "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag
        return self.error(
            node, f"the tag {shown} is not allowed: specs are plain data (safe YAML), never objects or code", path,
            expected="a plain value, list or mapping", found=f"tag {shown}")

    def scalar(self, node: ScalarNode, path: tuple[Any, ...]) -> Any:
        tag, text = node.tag or "", node.value
        try:
            if tag == _TAG + "str" or tag in (_TAG + "timestamp", _TAG + "value") and node.style is None:
                problem = _unwritable(text)
                if problem:
                    self.errors.append(self.error(node, problem, path))
                return text
            if tag == _TAG + "null":
                return None
            if tag == _TAG + "bool":
                return text.lower() in ("true", "yes", "on", "y")
            if tag == _TAG + "int":
                return _to_int(text)
            if tag == _TAG + "float":
                return _to_float(text)
        except ValueError:
            shown, value = "!!" + tag[len(_TAG):], _clipped(text)
            self.errors.append(self.error(node, f"{value} is not a valid {shown}", path, found=value))
            return None
        self.errors.append(self.bad_tag(node, path))
        return None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    """The lines as YAML counts them (str.splitlines also breaks at U+2028, form feeds...: the
    excerpt would then show another line than the one the error's line number names)."""
    lines = _LINE_BREAK.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _unwritable(text: str) -> str | None:
    """What makes a string impossible to use as a file name or to write as UTF-8 (both escapes that
    double-quoted YAML allows, "\\0" and "\\ud800"), or None. The run writes every value into
    resolved.yaml and uses some as paths: such a string crashes it, so it is refused here."""
    if "\0" in text:
        return "a NUL character (\\0): no spec value holds one"
    if any("\ud800" <= character <= "\udfff" for character in text):
        return "a lone UTF-16 surrogate (\\ud800 to \\udfff) is not text: write the character itself, or \\U0001F600"
    return None


def _clipped(text: str, width: int = 60) -> str:
    """repr(text), cut in the middle when long (a 5000-digit number is not repeated whole)."""
    shown = repr(text)
    return shown if len(shown) <= width else f"{shown[: width // 2]}...{shown[-width // 2:]} ({len(text):,} characters)"


def _to_int(text: str) -> int:
    clean = text.replace("_", "").strip()
    sign = -1 if clean.startswith("-") else 1
    digits = clean.lstrip("+-")
    for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if digits.lower().startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits, 10)


def _to_float(text: str) -> float:
    clean = text.replace("_", "").strip()
    lowered = clean.lower()
    if lowered in (".inf", "+.inf"):
        return math.inf
    if lowered == "-.inf":
        return -math.inf
    if lowered == ".nan":
        return math.nan
    return float(clean)
