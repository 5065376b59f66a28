"""Command-line overrides: `model.n_layers=8`, `data.curriculum.1.seq_len=1024`, `train.eval=null`.

The value is parsed as YAML with the same safe parser as spec files. Each override becomes a
`Document` layer of its own, so an error in it points at the command-line argument.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from .errors import SpecError, SpecErrors
from .yaml_source import Document, Position, parse_yaml

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def override_label(index: int, text: str) -> str:
    """How an override is named in errors: `<override 1: model.n_layers=x>` (1-based); a long one
    is cut in the middle (the excerpt under the error shows it)."""
    shown = text if len(text) <= 80 else f"{text[:50]}...{text[-20:]}"
    return f"<override {index}: {shown}>"


def apply_override(data: dict[str, Any], index: int, text: str) -> Document:
    """Set the value of override number `index` (1-based) `text` in `data` (changed in place).

    Returns the override's layer: positions of what it set, in the argument's own text. Raises
    SpecErrors for a malformed override, a path through a plain value or a list index out of
    range. A key that the spec does not know is set anyway: validation then reports it with the
    closest valid key."""
    label = override_label(index, text)

    def fail(message: str, column: int = 1, **details: Any) -> SpecErrors:
        path = tuple(int(part) if part.isdigit() else part for part in key_text.strip().split(".") if part)
        return SpecErrors([SpecError(message, path=path, file=label, line=1, column=column, source_line=text, **details)])

    key_text, equals, value_text = text.partition("=")
    if not equals or not key_text.strip():
        raise fail("an override is PATH=VALUE, e.g. model.n_layers=8 or data.curriculum.1.seq_len=1024",
                   expected="PATH=VALUE", found=repr(text))
    if "\n" in value_text:
        raise fail("an override's value is one line", column=len(key_text) + 2)
    raw_parts = key_text.strip().split(".")
    offsets, column = [], len(key_text) - len(key_text.lstrip()) + 1
    for part in raw_parts:
        offsets.append(column)
        column += len(part) + 1
    if any(not part for part in raw_parts):
        raise fail(f"empty part in the override path {key_text.strip()!r}", expected="a.b.c", found=repr(key_text.strip()))

    if raw_parts[0] == "extends":
        raise fail("extends cannot be overridden: it is merged before overrides apply; edit the spec, or override "
                   "the values themselves", expected="a path other than extends", found=repr(key_text.strip()))

    try:
        value_doc = parse_yaml(value_text, label, require_mapping=False, column_offset=len(key_text) + 1, source_lines=[text])
    except SpecErrors as raised:  # a problem inside the value: at the path the override sets
        prefix = tuple(int(part) if part.isdigit() else part for part in raw_parts)
        raise SpecErrors([replace(error, path=prefix + tuple(error.path)) for error in raised.errors]) from None

    path: list[Any] = []
    node: Any = data
    for depth, part in enumerate(raw_parts):
        last = depth == len(raw_parts) - 1
        shown = ".".join(str(p) for p in [*path, part])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise fail(f"{'.'.join(map(str, path))} is a list: the next part is an index (0 to {len(node) - 1}), found {part!r}",
                           column=offsets[depth], expected=f"an index 0 to {len(node) - 1}", found=repr(part))
            position = int(part)
            if not 0 <= position < len(node):
                raise fail(f"index {position} is out of range: {'.'.join(map(str, path))} has {len(node)} item(s)",
                           column=offsets[depth], expected=f"an index 0 to {len(node) - 1}", found=str(position))
            key: Any = position
        elif isinstance(node, dict):
            if not _SEGMENT.match(part):
                raise fail(f"{part!r} is not a key name", column=offsets[depth], found=repr(part))
            key = part
        else:
            raise fail(f"{'.'.join(map(str, path)) or 'the spec'} is a single value, so {shown} cannot be set",
                       column=offsets[depth], expected="a path to a key", found=repr(shown))
        if not last and isinstance(node, dict) and node.get(key) is None and raw_parts[depth + 1].isdigit():
            written = ".".join(str(p) for p in [*path, key])
            raise fail(f"{written} is not written in the spec (its default applies), so its item {raw_parts[depth + 1]} "
                       f"cannot be set; set the whole list: {written}=[...]", column=offsets[depth + 1],
                       expected=f"{written}=[...]", found=repr(key_text.strip()))
        path.append(key)
        if last:
            node[key] = value_doc.data
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # a new section (or one that was null): validation judges its keys
            node = node[key]

    layer = Document(file=label, lines=[text], replaces=tuple(path))
    layer.data = _nest(tuple(path), value_doc.data)
    prefix = tuple(path)
    for depth in range(len(prefix)):
        layer.keys[prefix[: depth + 1]] = Position(label, 1, offsets[depth])
    for sub, written_at in value_doc.values.items():
        layer.values[prefix + sub] = written_at
    # An empty value (`model.d_model=`) is null with no node to hold a position: point just past
    # the `=`, or errors about it would fall back to the spec file's line for the section.
    layer.values.setdefault(prefix, Position(label, 1, len(key_text) + 2))
    for sub, written_at in value_doc.keys.items():
        layer.keys[prefix + sub] = written_at
    return layer


def _nest(path: tuple[Any, ...], value: Any) -> Any:
    """{a: {1: {b: value}}} for path (a, 1, b): the override's own view of what it set, nested
    mappings all the way down so that it owns only the leaf and not the lists it passes."""
    for part in reversed(path):
        value = {part: value}
    return value
