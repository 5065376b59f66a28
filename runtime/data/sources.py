"""Where documents come from: a registry maps each source `kind` to its reader.

A reader resolves its inputs when built (missing files and empty globs are errors then),
gives a `key` that changes whenever its contents could (the cache fingerprint uses it), and
streams documents one at a time so that no corpus is ever held in memory whole. A document is a
text, or a `records.Conversation` where a files source reads chat or instruction records.
"""

from __future__ import annotations

import ast
import functools
import glob
import json
import multiprocessing
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable, Iterator

from tabula.schemas.data import FilesSource, HubSource, PythonStdlibSource
from tabula.schemas.registry import Registry

from .errors import DataError
from .records import Conversation, RecordError, fields_read, to_conversation
from .tokenize_worker import die_with_parent

Warn = Callable[[str], None]
Digest = Callable[[Path], str]  # a file's content hash

GLOB_CHARS = set("*?[")
SOURCES: Registry[type] = Registry("source")  # kind -> reader class: (name, source spec, base_dir) -> reader


def _default_cache(spec: Any) -> set[str]:
    """`cache` where it holds its default: keys of entries prepared before the field existed stay the same."""
    return {"cache"} if spec.cache else set()


@SOURCES.register("files")
class FilesReader:
    """`kind: files`: local files by glob, relative to the spec's folder."""

    def __init__(self, name: str, spec: FilesSource, base_dir: Path):
        self.name, self.spec, self.base_dir = name, spec, base_dir
        self.files = _expand(name, spec.paths, base_dir)

    def key(self, digest: Digest) -> dict[str, Any]:
        # Paths relative to the spec's folder: moving the whole project keeps the cache valid.
        fields = self.spec.model_dump(mode="json", exclude={"paths", *_default_cache(self.spec)})
        return {**fields, "files": [[_relative(path, self.base_dir), path.stat().st_size, self._digest(path, digest)] for path in self.files]}

    def _digest(self, path: Path, digest: Digest) -> str:
        try:
            return digest(path)
        except OSError as error:  # no permission: with on_error: skip, documents() skips it with a warning
            if self.spec.on_error == "fail":
                raise DataError(f"{path}: cannot read: {error.strerror or _first_line(error)} (set on_error: skip to skip such files)",
                                source=self.name) from None
            return "unreadable"

    def documents(self, warn: Warn, workers: int = 1) -> Iterator[str | Conversation]:
        """Each file's documents: texts, or Conversations where the source has `records`."""
        read = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}[self.spec.format]
        for path in self.files:
            yield from read(self.name, self.spec, path, warn)


@SOURCES.register("hub")
class HubReader:
    """`kind: hub`: a Hugging Face dataset, streamed record by record (needs the network)."""

    def __init__(self, name: str, spec: HubSource, base_dir: Path):
        self.name, self.spec = name, spec

    def key(self, digest: Digest) -> dict[str, Any]:
        # The contents cannot be hashed without downloading them: pin `revision` to be safe.
        return self.spec.model_dump(mode="json", exclude=_default_cache(self.spec))

    def documents(self, warn: Warn, workers: int = 1) -> Iterator[str]:
        spec = self.spec
        try:
            import datasets

            stream = datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True, revision=spec.revision)
            for index, record in enumerate(stream):
                if spec.max_documents is not None and index >= spec.max_documents:
                    break
                if spec.text_field not in record:
                    raise DataError(
                        f"record {index} of {spec.name} has no field {spec.text_field!r} (fields: {', '.join(sorted(record))})",
                        source=self.name, path=("data", "sources", self.name, "text_field"),
                    )
                text = record[spec.text_field]
                if isinstance(text, str):
                    yield text
                else:
                    warn(f"source {self.name!r}: skipped record {index}: {spec.text_field!r} is {type(text).__name__}, not text")
        except DataError:
            raise
        except Exception as error:  # offline, unknown dataset, bad split: all one clear line
            raise DataError(
                f"cannot stream hub dataset {spec.name!r} (it needs the network): {type(error).__name__}: {_first_line(error)}",
                source=self.name,
            ) from None


@SOURCES.register("python_stdlib")
class StdlibReader:
    """`kind: python_stdlib`: the .py files of the running Python's standard library, sorted by
    path; each file is a document (`source`) and so are each module's docstrings (`docstrings`)."""

    def __init__(self, name: str, spec: PythonStdlibSource, base_dir: Path):
        self.name, self.spec = name, spec
        self.root = Path(sysconfig.get_paths()["stdlib"])
        files = stdlib_files(self.root)
        self.files = files[: spec.max_files] if spec.max_files else files
        if not self.files:
            raise DataError(f"no .py files found under {self.root}", source=name)

    def key(self, digest: Digest) -> dict[str, Any]:
        return {
            **self.spec.model_dump(mode="json"),
            "python": sys.version.split()[0],
            "files": [[path.relative_to(self.root).as_posix(), path.stat().st_size, digest(path)] for path in self.files],
        }

    def documents(self, warn: Warn, workers: int = 1) -> Iterator[str]:
        read = functools.partial(stdlib_documents, include=tuple(self.spec.include))
        if workers <= 1:
            for path in self.files:
                yield from read(path)
            return
        # Parsing docstrings is most of the reading time: files go to worker processes, in order.
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with context.Pool(workers, initializer=die_with_parent) as pool:
            for documents in pool.imap(read, self.files, chunksize=8):
                yield from documents


def stdlib_documents(path: Path, include: tuple[str, ...]) -> list[str]:
    """One standard-library file's documents: its source and/or its docstrings."""
    text = path.read_bytes().decode("utf-8", errors="replace")  # a few test files are deliberately not UTF-8
    documents = [text] if "source" in include else []
    if "docstrings" in include:
        docstrings = module_docstrings(text)
        if docstrings:
            documents.append(docstrings)
    return documents


def open_source(name: str, spec: Any, base_dir: Path):
    """The reader for one `data.sources` entry; raises DataError for missing inputs."""
    return SOURCES[spec.kind](name, spec, base_dir)


def stdlib_files(root: Path) -> list[Path]:
    """Every .py file under the standard library folder, installed packages excluded, sorted."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        found.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def module_docstrings(text: str) -> str:
    """The module's, classes' and functions' docstrings, in source order, joined by blank lines."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # the standard library keeps some deliberately broken files
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    parts = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
    return "\n\n".join(part for part in parts if part)


# ---------------------------------------------------------------- files: globs and formats


def _expand(name: str, patterns: list[str], base_dir: Path) -> list[Path]:
    files: dict[str, Path] = {}
    for index, pattern in enumerate(patterns):
        full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
        where = ("data", "sources", name, "paths", index)
        if GLOB_CHARS & set(pattern):
            matched = [Path(p) for p in sorted(glob.glob(full, recursive=True)) if os.path.isfile(p)]
            if not matched:
                raise DataError(f"the pattern {pattern!r} matches no files (looked in {base_dir})", source=name, path=where)
        else:
            if os.path.isdir(full):
                raise DataError(f"{full} is a folder: match its files with a pattern such as '{pattern.rstrip('/')}/**/*.txt'",
                                source=name, path=where)
            if not os.path.isfile(full):
                raise DataError(f"file not found: {full}", source=name, path=where)
            matched = [Path(full)]
        for path in matched:
            files.setdefault(str(path.resolve()), path)
    return list(files.values())


LARGE_TEXT_FILE = 256 * 2**20


def _read_text(name: str, spec: FilesSource, path: Path, warn: Warn) -> Iterator[str]:
    if path.stat().st_size > LARGE_TEXT_FILE:
        warn(f"source {name!r}: {path} ({path.stat().st_size >> 20} MiB) is read whole as one document; "
             "split it into smaller files, or use format: jsonl, to keep memory low")
    try:
        data = path.read_bytes()
    except OSError as error:
        bad_record(name, spec, f"{path}: cannot read: {error.strerror or _first_line(error)}", warn)
        return
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_record(name, spec, f"{path}: cannot read as UTF-8 text: {_first_line(error)}", warn)


def _read_jsonl(name: str, spec: FilesSource, path: Path, warn: Warn) -> Iterator[str | Conversation]:
    try:
        handle = path.open("rb")
    except OSError as error:
        bad_record(name, spec, f"{path}: cannot open: {_first_line(error)}", warn)
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                bad_record(name, spec, f"{path}:{number}: not valid JSON ({error})", warn)
                continue
            document = _document(name, spec, record, f"{path}:{number}", warn)
            if document is not None:
                yield document


def _read_parquet(name: str, spec: FilesSource, path: Path, warn: Warn) -> Iterator[str | Conversation]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as error:
        bad_record(name, spec, f"{path}: not a readable parquet file ({_first_line(error)})", warn)
        return
    columns = table.schema_arrow.names
    wanted = fields_read(spec.records) if spec.records is not None else [spec.text_field]
    required = wanted if spec.records is None or spec.records.kind == "chat" else wanted[:2]
    missing = [column for column in required if column not in columns]
    if missing:
        # A missing column is a spec mistake, not a bad record: always an error.
        field = "text_field" if spec.records is None else "records"
        raise DataError(
            f"{path}: no column {missing[0]!r} (columns: {', '.join(columns)})", source=name, path=("data", "sources", name, field),
        )
    row = 0
    try:
        for batch in table.iter_batches(columns=[c for c in wanted if c in columns], batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                document = _document(name, spec, record, f"{path}: row {row}", warn)
                if document is not None:
                    yield document
    except DataError:
        raise
    except Exception as error:
        bad_record(name, spec, f"{path}: unreadable after row {row} ({_first_line(error)})", warn)


def _document(name: str, spec: FilesSource, record: Any, origin: str, warn: Warn) -> str | Conversation | None:
    """A record's text (text_field), or its conversation (records); None for a bad record skipped."""
    if spec.records is not None:
        try:
            return to_conversation(record, spec.records, origin)
        except RecordError as error:
            bad_record(name, spec, f"{origin}: {error}", warn, path=("data", "sources", name, "records"))
            return None
    if not isinstance(record, dict) or spec.text_field not in record:
        fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        bad_record(name, spec, f"{origin}: no field {spec.text_field!r} (found: {fields})", warn, path=("data", "sources", name, "text_field"))
        return None
    text = record[spec.text_field]
    if not isinstance(text, str):
        bad_record(name, spec, f"{origin}: field {spec.text_field!r} is {type(text).__name__}, not text", warn)
        return None
    return text


def bad_record(name: str, spec: FilesSource, message: str, warn: Warn, path: tuple[Any, ...] = ()) -> None:
    """Apply a files source's on_error to a bad file or record (`message` names its file and line):
    fail raises DataError, skip warns `source 'name': skipped <message>`."""
    if spec.on_error == "fail":
        raise DataError(message + " (set on_error: skip to skip such records)", source=name, path=path)
    warn(f"source {name!r}: skipped {message}")



def _relative(path: Path, base_dir: Path) -> str:
    try:
        return path.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
