"""Loading a spec: YAML file -> `extends:` chain merged -> command-line overrides -> validated Spec.

    spec = load_spec("specs/quickstart.yaml", overrides=["model.n_layers=2"])

Every problem found is raised together as one `SpecErrors`, each error with its spec path and
the file, line and column of whichever file (or override) set the value.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError

from .errors import SpecError, SpecErrors
from .overrides import apply_override
from .pydantic_errors import lookup, spec_errors_from
from .spec import Spec
from .yaml_source import Document, Position, parse_yaml, read_text

# The example specs and presets: specs/ beside schemas/ in a checkout, and tabula/specs/ beside
# tabula/schemas/ in an installed wheel (package-dir maps both the same way).
SPECS_DIR = Path(os.environ.get("TABULA_SPECS_DIR") or Path(__file__).resolve().parent.parent / "specs")
PRESETS_DIR = SPECS_DIR / "presets"
SECTIONS = tuple(Spec.model_fields)  # name, extends, seed, model, data, parallel, train, track
ALLOW_OUTSIDE_FLAG = "--allow-extends-outside"


class SourceMap:
    """Where each value of a loaded spec was written. `layers` are the parsed documents, highest
    priority first: the last override, ..., the first override, the spec, what it extends, ..."""

    def __init__(self, layers: list[Document], root_file: str | None = None):
        self.layers = layers
        self.root_file = root_file  # the spec's own file, as shown to the user

    def position(self, path: tuple[Any, ...], *, key: bool = False) -> Position | None:
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

    def locate(self, path: tuple[Any, ...], key: bool = False) -> tuple[str, int, int, str | None] | None:
        """(file, line, column, text of that line) of `path`, or None."""
        position = self.position(path, key=key)
        if position is None:
            return None
        layer = next((layer for layer in self.layers if layer.file == position.file), None)
        return position.file, position.line, position.column, layer.line_text(position.line) if layer else None


def load_spec(path: str | os.PathLike[str], overrides: Iterable[str] = (), *, allow_extends_outside: bool = False) -> Spec:
    """Read, compose and validate the spec file at `path`, then apply `overrides` (`a.b.c=value`,
    values parsed as YAML). Returns the frozen Spec (`spec.source_path`, `spec.base_dir` set);
    raises SpecErrors holding every error found.

    `extends:` may name files under the spec's own folder and under specs/ (the presets) only;
    `allow_extends_outside=True` (the commands' --allow-extends-outside) lifts that."""
    path = Path(path)
    document = read_spec(path, shown_as=str(path))
    return _finish(document, path.resolve().parent, overrides, source_path=path.resolve(),
                   allow_extends_outside=allow_extends_outside)


def load_spec_text(text: str, name: str = "<string>", overrides: Iterable[str] = (),
                   base_dir: str | os.PathLike[str] | None = None, *, allow_extends_outside: bool = False) -> Spec:
    """As `load_spec`, for YAML `text` shown in errors as `name`; `extends:` and relative paths
    are relative to `base_dir` (default: the working directory)."""
    document = parse_spec(text, name)
    folder = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    return _finish(document, folder, overrides, source_path=None, allow_extends_outside=allow_extends_outside)


def load_run_spec(run_dir: str | os.PathLike[str]) -> Spec:
    """The spec of a run folder: its resolved.yaml, whose relative paths (model.init's `from` weights, a
    tokenizer file) stay relative to the folder of the spec the run was started from (manifest.json's
    spec_path), as they were when it ran; the run folder itself when that is unknown. Raises SpecErrors."""
    import json

    from .rundir_protocol import MANIFEST_FILE, RESOLVED_FILE

    run_dir = Path(run_dir)
    resolved = run_dir / RESOLVED_FILE
    base_dir = run_dir
    try:
        spec_path = json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8")).get("spec_path")
    except (OSError, ValueError, AttributeError):
        spec_path = None
    if isinstance(spec_path, str) and Path(spec_path).parent.is_dir():
        base_dir = Path(spec_path).parent
    return load_spec_text(read_text(resolved), str(resolved), base_dir=base_dir)


def read_spec(path: str | os.PathLike[str], *, shown_as: str | None = None) -> Document:
    """The parsed YAML of the spec file at `path` (its own content only: no extends merged).
    Raises SpecErrors; see read_text for what is refused before parsing and parse_spec for a file
    that is not a spec."""
    shown = shown_as or str(path)
    return parse_spec(read_text(path, shown_as=shown), shown)


def parse_spec(text: str, file: str = "<string>") -> Document:
    """`text` parsed as a spec's YAML: a mapping of spec sections. A text that is not a spec (too few
    of its top-level keys are spec sections, or not a mapping at all) is refused with errors that
    never quote it: a command or an `extends:` pointed at /etc/passwd or a secrets file must not
    print its lines. A spec with a mistake is quoted as always, where the mistake is."""
    try:
        document = parse_yaml(text, file)
    except SpecErrors as raised:
        if _spec_like(_top_level_keys(text)):
            raise
        first = next((error for error in raised.errors if error.line is not None), raised.errors[0])
        raise SpecErrors([SpecError(
            f"not a tabula spec: not valid YAML, and too few of its top-level keys are spec "
            f"sections ({', '.join(SECTIONS)}); its lines are not shown",
            file=file, line=first.line, column=first.column, quote=False)]) from None
    keys = list(document.data)
    if not _spec_like(keys):
        known = sum(_section_like(key) for key in keys)
        where = document.keys.get((keys[0],))
        raise SpecErrors([SpecError(
            f"not a tabula spec: {known} of its {len(keys)} top-level keys {'is a' if known == 1 else 'are'} spec "
            f"section{'' if known == 1 else 's'} ({', '.join(SECTIONS)}); its lines are not shown",
            file=file, line=where.line if where else None, column=where.column if where else None,
            expected="a mapping of spec sections", quote=False)])
    return document


_TOP_LEVEL_KEY = re.compile(r"""^["']?([A-Za-z_][\w.-]*)["']?[ \t]*:(?:[ \t]|$)""", re.MULTILINE)


def _top_level_keys(text: str) -> list[str]:
    """The keys written at the start of a line of a text that may not parse (block style)."""
    return _TOP_LEVEL_KEY.findall(text)


def _section_like(key: Any) -> bool:
    """A spec section's name, or a typo of one (`modle`, `Train`)."""
    key = str(key).lower()
    return key in SECTIONS or bool(difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.8))


def _spec_like(keys: Sequence[Any]) -> bool:
    """Whether top-level `keys` are those of a spec (with typos): at least half of them spec sections.
    A Kubernetes secret (apiVersion, kind, metadata, type, data) is not; `{}` is nothing to quote."""
    return 2 * sum(_section_like(key) for key in keys) >= len(keys)


def position_of(spec: Spec, path: tuple[Any, ...] | str, *, key: bool = False) -> Position | None:
    """Where the value at spec `path` (a tuple or a dotted string) was written, for errors found
    after loading (the compiler's plan checks); None for defaults or specs built in code."""
    if isinstance(path, str):
        path = tuple(int(part) if part.isdigit() else part for part in path.split("."))
    source_map = spec._source_map
    return source_map.position(tuple(path), key=key) if source_map is not None else None


def error_at(spec: Spec, path: tuple[Any, ...], message: str, **details: Any) -> SpecError:
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
    then under specs/, then a preset name under specs/presets/ (`.yaml` optional). Wherever it is:
    extends_target also says which places are outside the folders a spec may extend from."""
    looked = _extends_candidates(name, base_dir)
    return next((path for path in looked if _is_file(path)), None), looked


def extends_roots(spec_folder: Path) -> tuple[Path, ...]:
    """The folders (resolved) whose files a spec in `spec_folder` may extend without
    --allow-extends-outside: its own folder tree and specs/ (the presets; $TABULA_SPECS_DIR)."""
    return tuple(dict.fromkeys(_resolved(folder) for folder in (spec_folder, SPECS_DIR)))


def extends_target(name: str, base_dir: Path, roots: Sequence[Path], *,
                   allow_outside: bool = False) -> tuple[Path | None, list[Path], Path | None]:
    """(the file `extends: name` refers to or None, the places looked, the place where the search
    stopped because it lies outside `roots`, or None). The places are tried in find_extends's order
    whether or not `allow_outside`, so the flag never changes which file a name means, only whether
    it may be read; a place outside is never opened, nor even tested for existence. Symlinks are
    resolved before the check."""
    looked: list[Path] = []
    for path in _extends_candidates(name, base_dir):
        if not allow_outside and not any(_resolved(path).is_relative_to(root) for root in roots):
            return None, looked, path
        looked.append(path)
        if _is_file(path):
            return path, looked, None
    return None, looked, None


def _extends_candidates(name: str, base_dir: Path) -> list[Path]:
    names = [name] if Path(name).suffix in (".yaml", ".yml") else [name + ".yaml", name]
    return list(dict.fromkeys(folder / candidate for folder in (base_dir, SPECS_DIR, PRESETS_DIR) for candidate in names))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a name too long, a symlink loop: compared as written
        return Path(os.path.abspath(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL: no such file
        return False


def _finish(document: Document, base_dir: Path, overrides: Iterable[str], *, source_path: Path | None,
            allow_extends_outside: bool = False) -> Spec:
    chain = [source_path] if source_path is not None else []
    roots = extends_roots(base_dir)
    data, layers = _compose(document, base_dir, chain, roots, allow_extends_outside)
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


def _compose(document: Document, base_dir: Path, chain: list[Path], roots: Sequence[Path],
             allow_outside: bool) -> tuple[dict[str, Any], list[Document]]:
    """The document's data with its `extends:` chain merged in (deep merge, lists replaced), and
    the layers it came from, the document first. Every link must lie under `roots` unless
    `allow_outside`."""
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
    target, looked, outside = extends_target(name, base_dir, roots, allow_outside=allow_outside)
    shown_chain = " -> ".join(_shown(path) for path in chain) or document.file
    if outside is not None:
        resolved = _resolved(outside)
        leads = f" (it leads to {resolved})" if resolved != Path(os.path.abspath(outside)) else ""
        raise fail(f"{_clip(name)} is outside this spec's folder and specs/{leads}: extending it needs {ALLOW_OUTSIDE_FLAG} "
                   f"(allow_extends_outside=True in load_spec)",
                   expected="a spec under " + " or ".join(str(root) for root in roots), found=_clip(name))
    if target is None:
        presets = sorted(path.stem for path in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
        close = difflib.get_close_matches(Path(name).stem, presets, n=1, cutoff=0.6)
        raise fail(f"cannot find {_clip(name)} (extends chain: {shown_chain}); looked in: "
                   + ", ".join(_clip(_shown(path), quote=False) for path in looked),
                   expected="an existing spec file or a preset: " + ", ".join(presets), found=_clip(name),
                   suggestion=close[0] if close else None)
    target = target.resolve()
    if target in chain:
        cycle = " -> ".join(_shown(path) for path in [*chain, target])
        raise fail(f"extends cycle: {cycle}", found=repr(name))
    base_document = read_spec(target, shown_as=_shown(target))
    base_data, base_layers = _compose(base_document, target.parent, [*chain, target], roots, allow_outside)
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
        return str(_resolved(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _clip(text: str, quote: bool = True, width: int = 100) -> str:
    """repr(text) (or text), cut in the middle past `width` characters: a 5000-character name is not
    repeated whole in every place an error names it."""
    shown = repr(text) if quote else text
    return shown if len(shown) <= width else f"{shown[: width // 2]}...{shown[-width // 2:]}"


def _in_file_order(errors: list[SpecError], main_file: str) -> list[SpecError]:
    return sorted(errors, key=lambda e: (e.file != main_file, e.file or "", e.line or 0, e.column or 0))
