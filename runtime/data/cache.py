"""The token cache: where it lives, what keys it, and how an entry is written atomically.

An entry is a folder named by the data fingerprint. It is built under a temporary name
(`.tmp-<fingerprint>-<pid>-<random>`), every file fsynced, then renamed into place: a folder
with the fingerprint's name is always complete, and an interrupted prepare leaves only a
temporary folder, removed by the next prepare once its process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError

FORMAT = 1  # bump when the entry layout or the tokenization changes
_WRITING: set[Path] = set()  # this process's entries in progress (never swept as stale)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: `cache_dir`, else $TABULA_CACHE_DIR, else $XDG_CACHE_HOME/tabula,
    else ~/.cache/tabula."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("TABULA_CACHE_DIR"):
        return Path(os.environ["TABULA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tabula"


def check_writable(root: Path) -> None:
    """Create the cache folder if needed; raises DataError, naming it, where that is impossible
    (a file in the way, no permission, a read-only disk)."""
    hint = "set --cache-dir or TABULA_CACHE_DIR to a writable folder"
    if root.exists() and not root.is_dir():
        raise DataError(f"the token cache {root} is not a folder: {hint}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the token cache folder {root}: {error.strerror or error}; {hint}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise DataError(f"the token cache {root} is not writable: {hint}")


def fingerprint(parts: dict[str, Any]) -> str:
    """32 hex digits of the SHA-256 of `parts` as canonical JSON."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FileDigests:
    """Content hashes of files, remembered by (path, size, mtime) in the cache folder so that a
    second prepare stats a large corpus instead of reading it again."""

    def __init__(self, root: Path):
        self.path = root / "file-digests.json"
        try:
            self.known: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        known = self.known.get(key)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return known[2]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        self.known[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self.changed = True
        return self.known[key][2]

    def save(self) -> None:
        """Remember the digests; a read-only cache (entries shared by another user) only forgets them."""
        if not self.changed:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(self.known))
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()


class PendingEntry:
    """A cache entry being written: files go into `folder`; `commit()` makes it visible."""

    def __init__(self, root: Path, key: str):
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root)
        self.root, self.key = root, key
        self.folder = root / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir()
        _WRITING.add(self.folder)

    def commit(self) -> Path:
        """fsync every file and the folder, then rename it to its fingerprint; returns the entry."""
        for path in self.folder.iterdir():
            fsync_path(path)
        fsync_path(self.folder)
        final = self.root / self.key
        try:
            os.rename(self.folder, final)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(self.folder, ignore_errors=True)
        fsync_path(self.root)
        _WRITING.discard(self.folder)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        _WRITING.discard(self.folder)


def remove_stale(root: Path) -> None:
    """Remove temporary entries whose writing process no longer runs."""
    for folder in root.glob(".tmp-*"):
        try:
            pid = int(folder.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _alive(pid) and folder not in _WRITING:
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries, so a rename into it survives a
    crash) to the disk. The runtime's checkpoints use it too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- listing and clearing (`tabula cache`)


@dataclass(frozen=True)
class TokenEntry:
    """One complete token cache entry, as `tabula cache` lists it."""

    path: Path
    size: int  # bytes
    sources: tuple[str, ...]
    tokens: int  # training and validation tokens over the sources
    vocab_size: int | None
    modified: float  # unix time the entry was written


def list_token_entries(root: Path) -> list[TokenEntry]:
    """The complete entries in the token cache folder `root` (a folder named by a fingerprint, holding
    meta.json), newest first. Anything else in the folder is left out."""
    entries = []
    for folder in root.iterdir() if root.is_dir() else []:
        meta_file = folder / "meta.json"
        if folder.name.startswith(".") or not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        shards = meta.get("shards") or {}
        tokens = sum(split.get("tokens", 0) for splits in shards.values() for split in splits.values())
        size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        entries.append(TokenEntry(folder, size, tuple(sorted(shards)), tokens, meta.get("vocab_size"), meta_file.stat().st_mtime))
    return sorted(entries, key=lambda e: -e.modified)


def clear_tokens(root: Path) -> tuple[int, int]:
    """Remove every complete entry, the stale temporary ones and the remembered file digests from the
    token cache folder `root` (an entry still being written by a live process is kept). Returns
    (entries removed, bytes freed)."""
    entries = list_token_entries(root)
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    if root.is_dir():
        remove_stale(root)
        with contextlib.suppress(OSError):
            (root / "file-digests.json").unlink()
    return len(entries), sum(entry.size for entry in entries)
