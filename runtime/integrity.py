"""Is a checkpoint folder intact? Checksums written with it, and checks that need none.

    write_checksums(folder)                      before the folder is renamed into place
    check_checkpoint(folder, files=None) -> str | None     None: intact; else why not, in words

`checksums.json` lists every file below the checkpoint folder (DeepSpeed's shards included) with its
size and SHA-256 (about 1 GB/s on one core, read back from the page cache right after the write).
A later file beside them (the universal folder or optimizer.pt a resume on another layout writes,
runtime/reshard.py) is not listed and not checked. A checkpoint written before checksums existed is
checked by its structure instead: JSON files parse, the safetensors header agrees with the file's
size, torch's zip files pass their CRCs. That catches truncation and most damage, not every flipped
byte inside the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .engine import OPTIMIZER_FILE, WEIGHTS_FILE

STATE_FILE = "state.json"
CHECKSUMS_FILE = "checksums.json"
DS_DIR, DS_LAYOUT_FILE = "deepspeed", "layout.json"  # runtime/reshard.py's names (it imports torch and deepspeed lazily)
ALGORITHM = "sha256"

log = logging.getLogger(__name__)


def digest(path: Path) -> str:
    hasher = hashlib.new(ALGORITHM)  # hashlib.file_digest is Python 3.11+; 3.10 is supported
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _files_below(folder: Path) -> list[Path]:
    """Regular files below `folder` but checksums.json and what is hidden (a `.tmp-*` being written)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != CHECKSUMS_FILE
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def write_checksums(folder: Path) -> None:
    """Record the size and digest of every file below `folder` in `folder/checksums.json` (not fsynced:
    the writer flushes the whole folder before renaming it)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, ALGORITHM: digest(p)} for p in _files_below(folder)}
    with open(folder / CHECKSUMS_FILE, "w", encoding="utf-8") as handle:
        json.dump({"algorithm": ALGORITHM, "files": files}, handle, indent=1)
        handle.write("\n")


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None) or (None, why it cannot be read)."""
    if not path.is_file():
        return None, _absent(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.name} is damaged ({_short(error)})"


def _absent(path: Path, name: str | None = None) -> str:
    """Why `path` (shown as `name`) is no file to read."""
    name = name or path.name
    return f"{name} is not a file" if path.exists() or path.is_symlink() else f"{name} is missing"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def check_checkpoint(folder: str | Path, files: Iterable[str] | None = None) -> str | None:
    """None when the checkpoint `folder` is intact, else the first reason it is not (one line, naming the
    file). `files`: check only these (relative names; e.g. the weights and state.json, what
    `tabula.load_model` reads); default every file the checkpoint was written with."""
    try:
        return _check(Path(folder), files)
    except OSError as error:  # a file that cannot be read back (I/O error, permissions) is no intact file
        name = Path(error.filename).name if getattr(error, "filename", None) else "a file"
        return f"{name} cannot be read ({error.strerror or error})"


def _check(folder: Path, files: Iterable[str] | None) -> str | None:
    state, problem = _read_json(folder / STATE_FILE)
    if problem:
        return problem
    step = folder.name.rpartition("-")[2]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or (step.isdigit() and state["step"] != int(step)):
        return f"{STATE_FILE} is damaged (it does not record step {int(step) if step.isdigit() else '?'})"
    wanted = None if files is None else set(files)
    if (folder / CHECKSUMS_FILE).exists():
        return _check_sums(folder, wanted)
    log.info("%s has no %s (written by an older tabula): checked by its structure only", folder, CHECKSUMS_FILE)
    return _check_structure(folder, wanted)


def _check_sums(folder: Path, wanted: set[str] | None) -> str | None:
    recorded, problem = _read_json(folder / CHECKSUMS_FILE)
    if problem:
        return problem
    listed = recorded.get("files") if isinstance(recorded, dict) and recorded.get("algorithm") == ALGORITHM else None
    if not isinstance(listed, dict) or WEIGHTS_FILE not in listed or STATE_FILE not in listed:
        return f"{CHECKSUMS_FILE} is damaged (it does not list the checkpoint's files)"
    for name, entry in listed.items():
        if wanted is not None and name not in wanted:
            continue
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{CHECKSUMS_FILE} is damaged (it names {name!r}, outside the checkpoint)"
        path = folder / name
        if not path.is_file():
            return _absent(path, name)
        if not isinstance(entry, dict):
            return f"{CHECKSUMS_FILE} is damaged (its entry for {name})"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size} bytes where {entry.get('size')} were written (truncated or overwritten)"
        if digest(path) != entry.get(ALGORITHM):
            return f"{name} does not match its {ALGORITHM} checksum (its bytes changed after it was written)"
    return None


def _check_structure(folder: Path, wanted: set[str] | None) -> str | None:
    """The checks a checkpoint without checksums allows."""
    names = [WEIGHTS_FILE] if wanted is None else [n for n in wanted if n != STATE_FILE]
    if wanted is None:
        if not (folder / OPTIMIZER_FILE).is_file() and not (folder / DS_DIR / DS_LAYOUT_FILE).is_file():
            return f"{OPTIMIZER_FILE} is missing"
        names += [p.relative_to(folder).as_posix() for p in _files_below(folder) if p.suffix in (".json", ".pt")]
    for name in dict.fromkeys(names):
        path = folder / name
        if not path.is_file():
            return _absent(path, name)
        if path.suffix == ".safetensors":
            problem = _check_safetensors(path)
        elif path.suffix == ".json":
            problem = _read_json(path)[1]
        elif path.suffix == ".pt":
            problem = _check_zip(path)
        else:
            problem = None
        if problem:
            return problem
    if wanted is None and not (folder / "rng-rank0.json").is_file():
        return "rng-rank0.json is missing"
    return None


def _check_safetensors(path: Path) -> str | None:
    """The header parses and its tensors end where the file ends."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"{path.name} is truncated or its header is damaged (a {length}-byte header in {size} bytes)"
            header = json.loads(handle.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        return f"{path.name} has a damaged header ({_short(error)})"
    if 8 + length + end != size:
        return f"{path.name} has {size} bytes where its header describes {8 + length + end} (truncated or damaged)"
    return None


def _check_zip(path: Path) -> str | None:
    """torch.save writes a zip file whose every member carries a CRC-32: reading them all checks the bytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as error:
        return f"{path.name} is damaged ({_short(error)})"
    return f"{path.name} is damaged (its member {bad} fails its CRC)" if bad else None
