"""The wizard's working spec: plain nested dicts and lists (what the YAML file will hold),
read and written by path, and the text <-> value conversions of its inputs.

Only values the user gave (or the opened file had) are stored; a field left empty falls back to
its schema default, so the saved spec stays as short as the one it started from.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML

from .schema_form import FormField

Path = tuple[Any, ...]
MISSING = object()


class FormData:
    """A nested dict edited by path; `version` counts changes (for debounced validation)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data if data is not None else {}
        self.version = 0

    def get(self, path: Path, default: Any = MISSING) -> Any:
        node: Any = self.data
        for key in path:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return default
        return node

    def set(self, path: Path, value: Any) -> None:
        """Set the value at `path`, creating the dicts on the way (a None on the way becomes a dict)."""
        node: Any = self.data
        for key in path[:-1]:
            child = node[key] if _has(node, key) else None
            if not isinstance(child, (dict, list)):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value
        self.version += 1

    def delete(self, path: Path) -> None:
        """Remove the key (a dict entry) or item (a list entry) at `path`, if present."""
        parent = self.get(path[:-1])
        if _has(parent, path[-1]):
            del parent[path[-1]]
            self.version += 1

    def rename(self, path: Path, new_key: str) -> bool:
        """Rename the dict key at `path`, keeping its position. False if `new_key` is taken or empty."""
        parent = self.get(path[:-1])
        old = path[-1]
        if not isinstance(parent, dict) or not new_key or (new_key != old and new_key in parent):
            return False
        items = [(new_key if key == old else key, value) for key, value in parent.items()]
        parent.clear()
        parent.update(items)
        self.version += 1
        return True


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    if isinstance(node, list):
        return isinstance(key, int) and 0 <= key < len(node)
    return False


_yaml = YAML(typ="safe", pure=True)


def parse_text(text: str, form_field: FormField) -> Any:
    """What the user typed -> the value stored: MISSING for an empty input (use the default, or
    null for a nullable field without one), the raw string for plain text fields, otherwise the
    text read as a YAML value ("3e-4" -> 0.0003, "64k" -> "64k", "[0.9, 0.95]" -> a list).
    Text that is not valid YAML is kept as a string, so validation reports it."""
    stripped = text.strip()
    if not stripped:
        return None if form_field.nullable and not form_field.has_default else MISSING
    if form_field.text and stripped != "null":
        return text
    try:
        return _yaml.load(stripped)
    except Exception:  # noqa: BLE001 - any YAML error means "not a value": validation reports the string
        return stripped


def show_value(value: Any) -> str:
    """A stored value as the text of an input (flow YAML for lists and dicts)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = True
        yaml.width = 10_000
        stream = io.StringIO()
        yaml.dump(value, stream)
        return stream.getvalue().strip()
    return str(value)
