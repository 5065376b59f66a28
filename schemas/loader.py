"""Loading a spec: YAML file -> `extends:` chain merged -> command-line overrides -> validated Spec.

    spec = load_spec("specs/quickstart.yaml", overrides=["model.n_layers=2"])

Every problem found is raised together as one `SpecErrors`, each error with its spec path and
the file, line and column of whichever file (or override) set the value.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from .errors import SpecError, SpecErrors
from .overrides import apply_override
from .pydantic_errors import lookup, spec_errors_from
from .spec import Spec
from .yaml_source import Document, Position, parse_yaml, read_yaml

SPECS_DIR = Path(os.environ.get("TABULA_SPECS_DIR") or Path(__file__).resolve().parent.parent / "specs")
PRESETS_DIR = SPECS_DIR / "presets"


class SourceMap:
    """Where each value of a loaded spec was written. `layers` are the parsed documents, highest
    priority first: the last override, ..., the first override, the spec, what it extends, ..."""

    def __init__(self, layers: list[Document], root_file: str | None = None):
        self.layers = layers
        self.root_file = root_file  # the spec's own file, as shown to the user

    def position(self, path: tuple, *, key: bool = False) -> Position | None:
        """Where the value at `path` (or, with key=True, its key) was written; None where no file
        set it (a default)."""
        candidates = self.layers
        for depth in range(1, len(path) + 1):
            prefix, kept = path[:depth], []
            for layer in candidates:
                found, value = lookup(layer.data, prefix)
                if not found:
                    continue
                kept.append(layer)
                if not isinstance(value, dict):  # a list or value replaces what lower layers had
                    break
                if layer.replaces is not None and prefix[: len(layer.replaces)] == layer.replaces:
                    break  # an override's mapping replaces too: extends merges, overrides do not
            if not kept:
                return None
            candidates = kept
        for layer in candidates:
            table = layer.keys if key else layer.values
            if path in table:
                return table[path]
        return None

    def locate(self, path: tuple, key: bool = False) -> tuple[str, int, int, str | None] | None:
        """(file, line, column, text of that line) of `path`, or None."""
        position = self.position(path, key=key)
        if position is None:
            return None
        layer = next((layer for layer in self.layers if layer.file == position.file), None)
        return position.file, position.line, position.column, layer.line_text(position.line) if layer else None


def load_spec(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Spec:
    """Read, compose and validate the spec file at `path`, then apply `overrides` (`a.b.c=value`,
    values parsed as YAML). Returns the frozen Spec (`spec.source_path`, `spec.base_dir` set);
    raises SpecErrors holding every error found."""
    path = Path(path)
    document = read_yaml(path, shown_as=str(path))
    return _finish(document, path.resolve().parent, overrides, source_path=path.resolve())


def load_spec_text(text: str, name: str = "<string>", overrides: Iterable[str] = (),
                   base_dir: str | os.PathLike | None = None) -> Spec:
    """As `load_spec`, for YAML `text` shown in errors as `name`; `extends:` and relative paths
    are relative to `base_dir` (default: the working directory)."""
    document = parse_yaml(text, name)
    folder = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    return _finish(document, folder, overrides, source_path=None)


def position_of(spec: Spec, path: tuple | str, *, key: bool = False) -> Position | None:
    """Where the value at spec `path` (a tuple or a dotted string) was written, for errors found
    after loading (the compiler's plan checks); None for defaults or specs built in code."""
    if isinstance(path, str):
        path = tuple(int(part) if part.isdigit() else part for part in path.split("."))
    source_map = spec._source_map
    return source_map.position(tuple(path), key=key) if source_map is not None else None


def error_at(spec: Spec, path: tuple, message: str, **details: Any) -> SpecError:
    """A SpecError at spec `path`, positioned where the loader saw it written; for a value left
    to its default, at the nearest enclosing section that was written."""
    path = tuple(path)
    source_map: SourceMap | None = spec._source_map
    where = None
    if source_map is not None:
        for cut in range(len(path), -1, -1):
            # the value itself; for an enclosing section, the line that names it
            where = (cut < len(path) and source_map.locate(path[:cut], key=True)) or source_map.locate(path[:cut])
            if where is not None:
                break
    if where is None:
        file = source_map.root_file if source_map is not None else spec.source_path
        return SpecError(message, path=path, file=str(file) if file is not None else None, **details)
    file, line, column, text = where
    return SpecError(message, path=tuple(path), file=file, line=line, column=column, source_line=text, **details)


def find_extends(name: str, base_dir: Path) -> tuple[Path | None, list[Path]]:
    """The file `extends: name` refers to, and every place looked: relative to the spec's folder,
    then under specs/, then a preset name under specs/presets/ (`.yaml` optional)."""
    names = [name] if Path(name).suffix in (".yaml", ".yml") else [name + ".yaml", name]
    looked = [folder / candidate for folder in (base_dir, SPECS_DIR, PRESETS_DIR) for candidate in names]
    looked = list(dict.fromkeys(looked))
    return next((path for path in looked if path.is_file()), None), looked


def _finish(document: Document, base_dir: Path, overrides: Iterable[str], *, source_path: Path | None) -> Spec:
    chain = [source_path] if source_path is not None else []
    data, layers = _compose(document, base_dir, chain)
    errors: list[SpecError] = []
    for index, text in enumerate(overrides, start=1):
        try:
            layers.insert(0, apply_override(data, index, text))
        except SpecErrors as raised:
            errors.extend(raised.errors)
    if errors:
        raise SpecErrors(errors)
    source_map = SourceMap(layers, root_file=document.file)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        found = spec_errors_from(error, data, Spec, source_map.locate)
        raise SpecErrors(_in_file_order(found, document.file)) from None
    spec._source_path = source_path
    spec._base_dir = base_dir
    spec._source_map = source_map
    return spec


def _compose(document: Document, base_dir: Path, chain: list[Path]) -> tuple[dict, list[Document]]:
    """The document's data with its `extends:` chain merged in (deep merge, lists replaced), and
    the layers it came from, the document first."""
    data = document.data
    name = data.get("extends")
    if name is None:
        return copy.deepcopy(data), [document]
    where = document.values.get(("extends",))

    def fail(message: str, **details: Any) -> SpecErrors:
        return SpecErrors([SpecError(
            message, path=("extends",), file=document.file, line=where.line if where else None,
            column=where.column if where else None, source_line=document.line_text(where.line) if where else None,
            **details)])

    if not isinstance(name, str) or not name.strip():
        raise fail("extends names a spec file or a preset", expected="a path or preset name", found=repr(name))
    target, looked = find_extends(name, base_dir)
    shown_chain = " -> ".join(_shown(path) for path in chain) or document.file
    if target is None:
        presets = sorted(path.stem for path in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
        close = difflib.get_close_matches(Path(name).stem, presets, n=1, cutoff=0.6)
        raise fail(f"cannot find {name!r} (extends chain: {shown_chain}); looked in: "
                   + ", ".join(_shown(path) for path in looked),
                   expected="an existing spec file or a preset: " + ", ".join(presets), found=repr(name),
                   suggestion=close[0] if close else None)
    target = target.resolve()
    if target in chain:
        cycle = " -> ".join(_shown(path) for path in [*chain, target])
        raise fail(f"extends cycle: {cycle}", found=repr(name))
    base_document = read_yaml(target, shown_as=_shown(target))
    base_data, base_layers = _compose(base_document, target.parent, [*chain, target])
    base_data.pop("extends", None)
    return _merge(base_data, copy.deepcopy(data)), [document, *base_layers]


def _merge(base: Any, over: Any) -> Any:
    """Deep merge: mappings merge key by key, anything else (lists included) replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over


def _shown(path: Path) -> str:
    """A path as the user knows it: relative to the working directory where it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _in_file_order(errors: list[SpecError], main_file: str) -> list[SpecError]:
    return sorted(errors, key=lambda e: (e.file != main_file, e.file or "", e.line or 0, e.column or 0))
