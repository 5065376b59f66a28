"""The run directory: created for a new run, found again for a resume, and its manifest.

    runs/<name>-<yyyymmdd-hhmmss>/
      spec.yaml  resolved.yaml  manifest.json  events.jsonl  tokenizer.json  checkpoints/  control/

Its names and protocol (event kinds, control requests) are `tabula.schemas.rundir_protocol`.

manifest.json records what is needed to reproduce the run: spec hash, tabula version, the git commit
of the repository holding the spec, package versions, hardware, data fingerprint, tokenizer hash,
command line; and each resume (with the spec changes it applied).
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import (
    CHECKPOINTS_DIR, CONTROL_DIR, ERROR_LOG, EVENTS_FILE, LOCK_FILE, MANIFEST_FILE, RESOLVED_FILE, SPEC_FILE, TOKENIZER_FILE,
)

from .checkpoint import CheckpointError, Selection, list_checkpoints, select_checkpoint, step_of
from .errors import RunFolderDamaged, RunInputError
from .integrity import check_checkpoint
from .runlock import RunLock, lock_owner

TMP_PREFIX = ".tmp-"  # a new run's folder while it is being created

PACKAGES = ["torch", "numpy", "pydantic", "ruamel.yaml", "safetensors", "tokenizers", "datasets", "aim", "deepspeed", "textual"]


@dataclass(frozen=True)
class RunDir:
    """A run's folder and the names of what it holds."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def read_manifest(self) -> dict[str, Any]:
        """manifest.json as a dict. Raises RunFolderDamaged naming the file and what is wrong with it."""
        return read_manifest_file(self.manifest_path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace manifest.json atomically (a reader never sees half a file; a refused write leaves the old
        one and no temporary file). Raises OSError."""
        write_atomically(self.manifest_path, json.dumps(manifest, indent=2) + "\n")

    def append_error_log(self, text: str) -> Path | None:
        """Append a traceback (with the time and pid) to error.log (`rundir_protocol.ERROR_LOG`): the
        command shows one line and points here. Returns the file, or None when the folder cannot take it."""
        path = self.path / ERROR_LOG
        try:  # never through a link (into another file)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with open(fd, "a", encoding="utf-8") as handle:
                handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n{text.rstrip()}\n")
        except OSError:
            return None
        return path

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)


def new_run_path(runs_dir: str | Path, name: str, now: float | None = None) -> Path:
    """`<runs_dir>/<name>-<yyyymmdd-hhmmss>`, with a `-2`, `-3` ... suffix if that second is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while os.path.lexists(path):  # (False for a name the file system refuses: check_new_run_path says why)
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_new_run_path(path: Path) -> None:
    """Raises RunInputError when a new run's folder cannot be created at `path`, without creating anything:
    it exists and is not an empty folder, a name in it is too long for the file system, or the nearest
    folder that exists above it is a file, read-only or not ours to write. (Creating it may still fail: a
    full disk; create_run says so then.)"""
    path = Path(path)
    for part in path.parts:  # before any stat, which fails on such a name
        if len(os.fsencode(part)) > NAME_MAX:
            raise _too_long(path, part, NAME_MAX)
    kind = _kind(path, follow=False)
    if kind == "link" or kind == "file":
        what = "a symbolic link" if kind == "link" else "not a folder"
        raise RunInputError(f"the run folder {path} exists and is {what}; choose another --run-dir")
    if kind == "folder":
        try:
            empty = not any(path.iterdir())
        except OSError as error:
            raise RunInputError(f"cannot use {path} as the run folder: {error.strerror or error}") from None
        if not empty:
            raise RunInputError(f"{path} already exists and is not empty; use --resume {path} to continue that run")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunInputError(f"cannot use {path} as the run folder: {_why_not_writable(path)}")
    above, missing = path.parent, [path.name]
    while _kind(above) == "missing" and above != above.parent:
        above, missing = above.parent, [above.name, *missing]
    if _kind(above) != "folder":
        raise RunInputError(f"cannot create the run folder {path}: {above} is a file, not a folder")
    name_max = _name_max(above)
    for part in missing:
        if len(os.fsencode(part)) > name_max:
            raise _too_long(path, part, name_max)
    if kind == "folder":
        return
    try:  # the OS's own answer (read-only file system, permission, /proc): a probe made and removed at once
        probe = tempfile.mkdtemp(prefix=".tmp-probe-", dir=above)
        os.rmdir(probe)
    except OSError as error:
        raise RunInputError(f"cannot create the run folder {path}: {above}: {error.strerror or error}") from None


NAME_MAX = 255  # bytes of one name on Linux's file systems (a file system may allow fewer: pathconf says)


def _too_long(path: Path, part: str, name_max: int) -> RunInputError:
    return RunInputError(f"cannot create the run folder {str(path)[:60]}...: the name {part[:40]}... is "
                         f"{len(os.fsencode(part))} bytes, longer than the {name_max} this file system allows "
                         f"(shorten the spec's name or --run-dir)")


def _kind(path: Path, *, follow: bool = True) -> str:
    """missing | folder | file | link (a symbolic link, when not `follow`ed); RunInputError when the OS
    cannot tell."""
    try:
        mode = os.stat(path).st_mode if follow else os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as error:
        raise RunInputError(f"cannot use {path} for the run folder: {error.strerror or error}") from None
    if stat.S_ISLNK(mode):
        return "link"
    return "folder" if stat.S_ISDIR(mode) else "file"


def _why_not_writable(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "Read-only file system"
    except OSError:
        pass
    return "Permission denied"


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def create_run(path: Path, *, spec_text: str, resolved_yaml: str, manifest: dict[str, Any], tokenizer_json: str | None,
               command: list[str] | None = None) -> tuple[RunDir, RunLock]:
    """Create a new run's folder at `path` (absent or an empty folder) with everything a run starts with,
    locked for this session. Atomic: the folder is built under a temporary name beside it
    (`.tmp-<name>-<pid>`, holding the lock from its first file) and renamed when complete, so a crash
    leaves no half run (and --resume never picks one). Returns the run and its lock. Raises RunInputError
    naming the path and the OS's reason (the folder exists, a full disk, a read-only file system ...)."""
    path = Path(path)
    check_new_run_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunInputError(f"cannot create the run folder {path}: {error.strerror or error}") from None
    _remove_abandoned(path.parent)
    tmp = path.parent / f"{TMP_PREFIX}{path.name[:100]}-{os.getpid()}"
    lock = None
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # this process's own, from an attempt that failed
        tmp.mkdir()
        lock = RunLock.acquire(tmp, command=command)
        (tmp / CHECKPOINTS_DIR).mkdir()
        (tmp / CONTROL_DIR).mkdir()
        _write_synced(tmp / SPEC_FILE, spec_text)
        _write_synced(tmp / RESOLVED_FILE, resolved_yaml)
        if tokenizer_json is not None:
            _write_synced(tmp / TOKENIZER_FILE, tokenizer_json)
        (tmp / EVENTS_FILE).touch()
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")  # last: a folder with it is whole
        os.rename(tmp, path)  # onto an absent name, or an empty folder (replaced)
    except BaseException as error:
        if lock is not None:
            lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise RunInputError(f"{path} already exists and is not empty (another run took the name); use --resume "
                                    f"{path} to continue that run") from None
            raise RunInputError(f"cannot create the run folder {path}: {error.strerror or error}") from None
        raise
    lock.moved(path)
    _sync_folder(path.parent)
    return RunDir(path), lock


def create_run_dir(path: Path, spec: Any = None, *, spec_text: str, resolved_yaml: str, manifest: dict[str, Any],
                   tokenizer_json: str | None) -> RunDir:
    """create_run, the lock released at once (for tools and tests that write a run folder themselves)."""
    run, lock = create_run(path, spec_text=spec_text, resolved_yaml=resolved_yaml, manifest=manifest,
                           tokenizer_json=tokenizer_json)
    lock.release()
    return run


def _remove_abandoned(parent: Path) -> None:
    """Remove the temporary folders that runs killed while creating their folder left in `parent`: only a
    `.tmp-*` folder whose lock file records a tabula owner and is held by nobody now."""
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    for candidate in candidates:
        owner = read_owner_once(candidate)
        if owner is None or lock_owner(candidate) is not None:
            continue
        try:
            with RunLock.acquire(candidate):  # nobody can take it over while it goes
                shutil.rmtree(candidate, ignore_errors=True)
        except RunInputError:
            continue


def read_owner_once(folder: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and "pid" in owner and "host" in owner else None


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` whole or not at all (a temporary file beside it, fsynced, renamed); a
    refused write removes the temporary file and raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_synced(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- manifest


def git_info(folder: Path) -> dict[str, Any] | None:
    """Commit, dirty flag and root of the git repository holding `folder`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        root = git("rev-parse", "--show-toplevel")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "root": root}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """Platform, CPU, memory and GPUs of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory": props.total_memory})
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory": memory,
        "gpus": gpus,
    }


def build_manifest(spec, *, spec_hash: str, prepared, command: list[str], overrides: list[str], run_name: str) -> dict[str, Any]:
    from tabula import __version__

    source = getattr(spec, "source_path", None)
    return {
        "run_name": run_name,
        "spec_name": spec.name,
        "created": time.time(),
        "spec_hash": spec_hash,
        "spec_path": str(Path(source).resolve()) if source else None,
        "overrides": list(overrides),
        "tabula_version": __version__,
        "git": git_info(Path(source).resolve().parent) if source else None,
        "packages": package_versions(),
        "hardware": hardware(),
        "data": {
            "fingerprint": prepared.fingerprint,
            "tokenizer_hash": prepared.tokenizer_hash,
            "vocab_size": prepared.vocab_size,
        },
        "command": command,
        "resumes": [],
    }


# ---------------------------------------------------------------- resume


def read_manifest_file(path: Path) -> dict[str, Any]:
    """A run's manifest.json as a dict. Raises RunFolderDamaged naming the file and what is wrong with it."""
    hint = "the run cannot be resumed without it (a copy of the run folder, if you have one, holds an intact one)"
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise RunFolderDamaged(path, "is a folder, not a file", hint)
        if not stat.S_ISREG(mode):  # a pipe or a device would block or never end
            raise RunFolderDamaged(path, "is not a regular file", hint)
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise RunFolderDamaged(path, "is missing: this is not a run folder, or its manifest was deleted") from None
    except OSError as error:
        raise RunFolderDamaged(path, f"cannot be read ({error.strerror or error})", hint) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise RunFolderDamaged(path, f"is larger than a manifest can be ({MAX_MANIFEST_BYTES // 2**20} MiB read)", hint)
    if not raw.strip():
        raise RunFolderDamaged(path, "is empty", hint)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFolderDamaged(path, "is damaged: not UTF-8 text", hint) from None
    except ValueError as error:
        raise RunFolderDamaged(path, f"is damaged: not JSON ({error})", hint) from None
    if not isinstance(manifest, dict):
        raise RunFolderDamaged(path, f"is damaged: a JSON {type(manifest).__name__}, not an object", hint)
    resumes = manifest.get("resumes", [])
    if not isinstance(resumes, list):
        raise RunFolderDamaged(path, f"is damaged: its `resumes` is a {type(resumes).__name__}, not a list", hint)
    return manifest


MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is a few kB; a resume appends a few hundred bytes


def run_has_checkpoint(path: Path) -> bool:
    return bool(list_checkpoints(path))


def find_resume(resume: str, spec, *, notes: list[str] | None = None) -> tuple[RunDir, Selection]:
    """(run folder, the checkpoint to resume and the damaged ones skipped) for `--resume DIR|auto`.

    DIR is a run folder (its newest intact checkpoint, runtime/checkpoint.select_checkpoint) or one
    checkpoint folder (which must be intact); `auto` is the newest intact checkpoint of the newest run of
    this spec's name under track.runs_dir (folders whose manifest is unreadable are passed over, each with
    a line appended to `notes`). Raises FileNotFoundError, CheckpointError or RunInputError (RunFolderDamaged:
    the run folder's manifest.json) with a message for the user."""
    if resume == "auto":
        newest = _newest_run(Path(spec.track.runs_dir), spec.name, notes)
        selection = select_checkpoint(newest)
        selection.required(newest / CHECKPOINTS_DIR)
        return RunDir(newest), selection
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such folder")
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: not a folder")
    if path.parent.name == CHECKPOINTS_DIR and path.name.startswith("step-"):
        if path not in list_checkpoints(path.parent):
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint")
        RunDir(path.parent.parent).read_manifest()
        reason = check_checkpoint(path)
        if reason is not None:
            intact = select_checkpoint(path.parent, up_to=step_of(path)).checkpoint
            instead = f"; the newest intact checkpoint before it is {intact}" if intact else ""
            raise CheckpointError(f"--resume {resume}: the checkpoint is damaged: {reason}{instead}")
        return RunDir(path.parent.parent), Selection(path)
    if not (path / MANIFEST_FILE).exists() and not (path / MANIFEST_FILE).is_symlink():
        raise FileNotFoundError(f"--resume {resume}: not a run folder (no {MANIFEST_FILE})")
    RunDir(path).read_manifest()
    if not list_checkpoints(path):
        raise FileNotFoundError(f"--resume {resume}: the run has no complete checkpoint to resume from")
    selection = select_checkpoint(path)
    selection.required(path / CHECKPOINTS_DIR)
    return RunDir(path), selection


def _newest_run(runs_dir: Path, name: str, notes: list[str] | None) -> Path:
    """The newest run (by its manifest's `created`) of spec `name` under `runs_dir` with a complete
    checkpoint; runs whose manifest is unreadable are passed over with a note."""
    try:
        entries = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    except OSError as error:
        raise RunInputError(f"--resume auto: cannot list {runs_dir}/: {error.strerror or error}") from None
    candidates = []
    for path in entries:
        if path.name.startswith(".") or not path.is_dir() or not (path / MANIFEST_FILE).exists():
            continue  # a run being created (.tmp-*), or no run at all
        try:
            manifest = read_manifest_file(path / MANIFEST_FILE)
        except RunFolderDamaged as error:
            if notes is not None:
                notes.append(f"--resume auto passed over {path}: its {MANIFEST_FILE} {error.reason}")
            continue
        if manifest.get("spec_name") == name and run_has_checkpoint(path):
            created = manifest.get("created", 0.0)
            candidates.append((created if isinstance(created, (int, float)) else 0.0, path.name, path))
    if not candidates:
        raise FileNotFoundError(f"--resume auto: no run of {name!r} with a complete checkpoint under {runs_dir}/")
    return max(candidates)[2]
