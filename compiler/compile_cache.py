"""The persistent compile cache: where torch.compile's artifacts are kept across runs, and how a model
is known to be in it. No torch here: the plan asks whether a model's cache is warm before anything runs.

    <cache root>/compile/                     the tabula cache folder's compile part (the token cache's
                                              root: $TABULA_CACHE_DIR, else $XDG_CACHE_HOME/tabula, else
                                              ~/.cache/tabula; runtime/data/cache.py finds it)
      torch-2.13.0+cpu/                       one folder a torch version: a new torch misses cleanly
        inductor/                             TORCHINDUCTOR_CACHE_DIR: inductor's FX graph cache, the
                                              AOTAutograd cache, compiled kernels (and Triton's on a GPU)
        models/<key>.json                     one entry a model that compiled here: the mark that its
                                              graphs are in inductor/ (a warm cache), with what it cost

Inductor keys its own entries by the graph, so a changed model simply misses; the entries under
models/ only let the plan know beforehand. A model's key hashes what changes its graphs: the model
section (compile.enabled aside), the vocabulary, precision, device type, activation checkpointing,
document masking and the source of tabula's model code. Measured sizes (bench/bench_compile.py): the
quickstart's graphs take ~2.5 MiB (dynamic shapes) to ~3.5 MiB (one static graph a stage shape); each
preset adds a few MiB.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

COMPILE_DIR = "compile"
INDUCTOR_DIR = "inductor"
MODELS_DIR = "models"


@cache
def torch_version() -> str:
    """The installed torch's version (`2.13.0+cpu`), read from its package metadata: torch is not imported."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def compile_root(cache_root: str | os.PathLike[str]) -> Path:
    """The compile part of the tabula cache folder `cache_root`."""
    return Path(cache_root) / COMPILE_DIR


def version_dir(cache_root: str | os.PathLike[str], version: str | None = None) -> Path:
    """The folder of one torch version's compiled artifacts (default: the installed torch's)."""
    return compile_root(cache_root) / f"torch-{version or torch_version()}"


def inductor_dir(cache_root: str | os.PathLike[str]) -> Path:
    """What TORCHINDUCTOR_CACHE_DIR is set to for this torch version."""
    return version_dir(cache_root) / INDUCTOR_DIR


@cache
def _model_code_digest() -> str:
    """Digest of tabula's model code (compiler/model.py, compile.py and blocks/): an edit to it changes
    the graphs, so a cache marked warm by another version of the code no longer counts as warm."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in sorted([here / "model.py", here / "compile.py", *here.glob("blocks/*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_key(spec: Any, *, vocab_size: int, precision: str, device_type: str) -> str:
    """24 hex digits naming the graphs `spec`'s training model compiles to (see the module docstring)."""
    from tabula.schemas.canonical import canonical_dict

    model = canonical_dict(spec)["model"]
    model["compile"].pop("enabled", None)  # auto, true or false compile the same graphs
    parts = {
        "model": model,
        "vocab_size": vocab_size,
        "precision": precision,
        "device_type": device_type,
        "activation_checkpointing": [spec.parallel.activation_checkpointing, spec.parallel.checkpoint_every_n],
        "document_masking": spec.data.packing.document_masking,
        "code": _model_code_digest(),
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_path(cache_root: str | os.PathLike[str], key: str) -> Path:
    return version_dir(cache_root) / MODELS_DIR / f"{key}.json"


def is_warm(cache_root: str | os.PathLike[str], key: str) -> bool:
    """Whether the model `key` compiled under this torch version before (its entry and inductor's folder exist)."""
    return entry_path(cache_root, key).is_file() and inductor_dir(cache_root).is_dir()


def record_entry(cache_root: str | os.PathLike[str], key: str, **info: Any) -> Path:
    """Write (or update) the model's entry, atomically: `info` (name, graphs, seconds...) merged into what
    it held, with `created` and `last_used` times. Returns its path. OSError passes up."""
    path = entry_path(cache_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entry = {"key": key, "created": time.time()}
    entry.update(info, last_used=time.time(), torch=torch_version())
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(entry, indent=1), encoding="utf-8")
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class VersionCache:
    """One torch version's part of the compile cache: its folder, size and model entries."""

    version: str
    path: Path
    size: int  # bytes, everything below `path`
    models: tuple[dict[str, Any], ...]  # the entries' contents, newest use first

    @property
    def current(self) -> bool:
        """Whether it belongs to the installed torch (another version's cache is never read)."""
        return self.version == torch_version()


def list_versions(cache_root: str | os.PathLike[str]) -> list[VersionCache]:
    """The compile cache's torch-version folders, the installed version's first."""
    root = compile_root(cache_root)
    found = []
    for path in sorted(root.glob("torch-*")) if root.is_dir() else []:
        models = []
        for entry in sorted((path / MODELS_DIR).glob("*.json")):
            try:
                models.append(json.loads(entry.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        models.sort(key=lambda m: -float(m.get("last_used", 0)))
        found.append(VersionCache(path.name.removeprefix("torch-"), path, folder_size(path), tuple(models)))
    found.sort(key=lambda v: (not v.current, v.version))
    return found


def clear(cache_root: str | os.PathLike[str]) -> tuple[int, int]:
    """Remove the whole compile cache; returns (torch-version folders removed, bytes freed)."""
    versions = list_versions(cache_root)
    root = compile_root(cache_root)
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
    return len(versions), sum(v.size for v in versions)


def folder_size(path: Path) -> int:
    """Bytes of the files below `path` (0 when absent; links not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total
