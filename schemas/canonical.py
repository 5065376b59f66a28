"""The one canonical form of a resolved spec, and its hash.

Defaults are filled, `extends` is dropped (the chain is already merged in), `kind` comes first in
each mapping and the other keys follow the schema's order, user-named mappings (sources, mix) are
sorted, quantities are plain numbers (`64k` -> 65536, `2%` -> 0.02) and floats are written in one
spelling. So the hash does not change with key order, comments, quoting, number spelling or
extends-vs-inlined, and `canonical_yaml` loads back to an equal Spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from pydantic import BaseModel

from .spec import Spec

# Plain strings that read back as strings in YAML 1.1 and 1.2 alike; anything else is quoted.
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./+-]*( [A-Za-z0-9_./+-]+)*$")
_NOT_PLAIN = re.compile(
    r"^(null|Null|NULL|~|true|True|TRUE|false|False|FALSE|y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF"
    r"|[-+]?\.?(inf|Inf|INF|nan|NaN|NAN)|[-+]?[0-9].*|\..*)$"
)


def canonical_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain data in canonical order (JSON-able: dicts, lists, str, int,
    float, bool, None), without `extends`."""
    data: dict[str, Any] = _canonical(spec)
    data.pop("extends", None)
    return data


def canonical_yaml(spec: Spec) -> str:
    """The canonical YAML text of the resolved spec: block style, two-space indent, one spelling
    for every value. `load_spec_text(canonical_yaml(spec))` equals `spec` (extends aside)."""
    lines: list[str] = []
    _emit_mapping(canonical_dict(spec), 0, lines)
    return "\n".join(lines) + "\n"


def spec_hash(spec: Spec) -> str:
    """SHA-256 (hex) of the canonical YAML: the identity of an experiment's resolved spec."""
    return hashlib.sha256(canonical_yaml(spec).encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        names = list(type(value).model_fields)
        names.sort(key=lambda name: name != "kind")  # stable: kind first, then schema order
        # a field added later whose default keeps older specs' form (Model.layers, a block's default kind)
        omit = getattr(type(value), "canonical_omit", {})
        return {name: _canonical(getattr(value, name)) for name in names if name not in omit or getattr(value, name) != omit[name]}
    if isinstance(value, dict):  # user-named keys: sources, mix
        return {str(key): _canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value == 0.0:
        return 0.0  # -0.0 and 0.0 are one value
    return value


# ---------------------------------------------------------------- a small, fixed YAML emitter


def _emit_mapping(data: dict[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in data.items():
        name = _string(key)
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{name}:")
            _emit_mapping(value, indent + 2, lines)
        elif isinstance(value, list) and value:
            lines.append(f"{pad}{name}:")
            _emit_sequence(value, indent + 2, lines)
        else:
            lines.append(f"{pad}{name}: {format_scalar(value)}")


def _emit_sequence(items: list[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            start = len(lines)
            _emit_mapping(item, indent + 2, lines)
            lines[start] = f"{pad}- {lines[start][indent + 2:]}"
        elif isinstance(item, list) and item:
            lines.append(f"{pad}-")
            _emit_sequence(item, indent + 2, lines)
        else:
            lines.append(f"{pad}- {format_scalar(item)}")


def format_scalar(value: Any) -> str:
    """A scalar as the canonical YAML writes it (`null`, `true`, `1.0e-05`, `"<|pad|>"`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _string(str(value))


def _string(text: str) -> str:
    if _PLAIN.match(text) and not _NOT_PLAIN.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def format_float(value: float) -> str:
    """A float in its shortest round-trip spelling that YAML 1.1 and 1.2 both read as a float:
    1.0e-05, 0.001, 10000.0, .inf, .nan."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        sign = exponent[0] if exponent[0] in "+-" else "+"
        return f"{mantissa}e{sign}{exponent.lstrip('+-')}"
    return text
