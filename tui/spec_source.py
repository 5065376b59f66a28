"""Where the wizard starts from: a spec file or a preset name, read as plain data with `extends`
merged in, so the form shows every value the spec really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import ALLOW_OUTSIDE_FLAG, SPECS_DIR, extends_roots, extends_target, read_spec

DEFAULT_START = "quickstart"


class SourceError(Exception):
    """The starting spec cannot be found or read (a message for the user)."""


def find_spec(name: str) -> Path:
    """A path to an existing file, or a preset name: `llama-tiny` -> specs/presets/llama-tiny.yaml,
    `quickstart` -> specs/quickstart.yaml. Raises SourceError listing the presets."""
    path = Path(name)
    if _is_file(path):
        return path
    stem = name[:-5] if name.endswith(".yaml") else name
    for candidate in (SPECS_DIR / "presets" / f"{stem}.yaml", SPECS_DIR / f"{stem}.yaml"):
        if _is_file(candidate):
            return candidate
    known = sorted(p.stem for p in SPECS_DIR.glob("*.yaml")) + sorted(p.stem for p in SPECS_DIR.glob("presets/*.yaml"))
    raise SourceError(f"no spec file or preset named {name!r}; presets: {', '.join(known) or 'none found'}")


def load_start(name: str, *, allow_extends_outside: bool = False, _seen: tuple[Path, ...] = (),
               _roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec `name` (path or preset) as plain nested data, its `extends` chain merged in
    (mappings merge key by key, lists replace) and the `extends` key dropped. `extends` finds its
    file as the loader does, and outside the spec's folder and specs/ only with allow_extends_outside."""
    path = find_spec(name).resolve()
    if path in _seen:
        raise SourceError(f"extends loops back to {path}")
    try:  # the spec language's own reader: safe, its errors say file:line:column, a non-spec is never quoted
        data = read_spec(path, shown_as=name if _is_file(Path(name)) else str(path)).data
    except SpecErrors as raised:
        first = raised.errors[0]
        where = ":".join(str(part) for part in (first.file, first.line, first.column) if part is not None)
        raise SourceError(f"{where}: {first.message}") from None
    roots = _roots or extends_roots(path.parent)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise SourceError(f"{path}: extends names a spec file or a preset, found {base!r}")
    target, looked, outside = extends_target(base, path.parent, roots, allow_outside=allow_extends_outside)
    if outside is not None:
        raise SourceError(f"{path}: extends {base!r} is outside the spec's folder and specs/: extending it needs {ALLOW_OUTSIDE_FLAG}")
    if target is None:
        raise SourceError(f"{path}: extends {base!r}: no such spec; looked in: {', '.join(map(str, looked))}")
    parent = load_start(str(target), allow_extends_outside=allow_extends_outside, _seen=_seen + (path,), _roots=roots)
    return merge(parent, data)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name longer than the filesystem allows, a NUL: no such file
        return False


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` deep-merged onto `base`: dicts merge, everything else (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
