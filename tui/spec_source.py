"""Where the wizard starts from: a spec file or a preset name, read as plain data with `extends`
merged in, so the form shows every value the spec really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabula.schemas.errors import SpecErrors
from tabula.schemas.yaml_source import read_yaml

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"  # the repository's example specs and presets
DEFAULT_START = "quickstart"


class SourceError(Exception):
    """The starting spec cannot be found or read (a message for the user)."""


def find_spec(name: str) -> Path:
    """A path to an existing file, or a preset name: `llama-tiny` -> specs/presets/llama-tiny.yaml,
    `quickstart` -> specs/quickstart.yaml. Raises SourceError listing the presets."""
    path = Path(name)
    if path.is_file():
        return path
    stem = name[:-5] if name.endswith(".yaml") else name
    for candidate in (SPECS_DIR / "presets" / f"{stem}.yaml", SPECS_DIR / f"{stem}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in SPECS_DIR.glob("*.yaml")) + sorted(p.stem for p in SPECS_DIR.glob("presets/*.yaml"))
    raise SourceError(f"no spec file or preset named {name!r}; presets: {', '.join(known) or 'none found'}")


def load_start(name: str, *, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec `name` (path or preset) as plain nested data, its `extends` chain merged in
    (mappings merge key by key, lists replace) and the `extends` key dropped."""
    path = find_spec(name).resolve()
    if path in _seen:
        raise SourceError(f"extends loops back to {path}")
    try:  # the spec language's own reader: safe, and its errors say file:line:column
        data = read_yaml(path, shown_as=name if Path(name).is_file() else str(path)).data
    except SpecErrors as raised:
        first = raised.errors[0]
        where = ":".join(str(part) for part in (first.file, first.line, first.column) if part is not None)
        raise SourceError(f"{where}: {first.message}") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    relative = path.parent / str(base)
    parent = load_start(str(relative) if relative.is_file() else str(base), _seen=_seen + (path,))
    return merge(parent, data)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` deep-merged onto `base`: dicts merge, everything else (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
