"""The run directory's protocol: the one interface between a training and whoever watches it.

    runs/<name>-<yyyymmdd-hhmmss>/
      spec.yaml  resolved.yaml  manifest.json  events.jsonl  tokenizer.json  checkpoints/  control/
      ranks/ (DeepSpeed ranks' errors)  output.log (a launched training's output)
      lock (the owning session's pid and host)  error.log (tracebacks of sessions that crashed)
      checkpoints/step-000500/model.safetensors ... (the rest of a checkpoint is runtime/checkpoint.py's)

The runtime writes the folder, the dashboard (or a script, or another machine sharing the file
system) reads it and drops control requests into it. Both import the names from here, and neither
imports the other. Torch-free. The contract in words is docs/interfaces.md ("The run directory").
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import tempfile
import time
from stat import S_ISREG
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.yaml"  # the spec as the user wrote it
RESOLVED_FILE = "resolved.yaml"  # canonical form, overrides applied: its sha256 is the spec hash
MANIFEST_FILE = "manifest.json"
EVENTS_FILE = "events.jsonl"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-000500/: complete once renamed from .tmp-step-000500
WEIGHTS_FILE = "model.safetensors"  # a checkpoint's consolidated weights (tied weights stored once)
CONTROL_DIR = "control"
RANKS_DIR = "ranks"
OUTPUT_LOG = "output.log"
LOCK_FILE = "lock"  # held (flock) by the session that owns the run; records its pid and host
ERROR_LOG = "error.log"  # the traceback of a session that failed unexpectedly

# A folder holding any of these is a run (one being created writes them first, one by one).
RUN_MARKERS = (MANIFEST_FILE, RESOLVED_FILE, SPEC_FILE, EVENTS_FILE)


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding any of RUN_MARKERS (whatever their state)."""
    path = Path(path)
    return path.is_dir() and any(os.path.lexists(path / name) for name in RUN_MARKERS)

# ---------------------------------------------------------------- events

# Every event has `kind`, `time` (unix seconds), `step` (optimizer steps done) and `tokens` (training
# tokens seen); each kind adds these fields. A session of a run (its first start, or a resume)
# begins with `start`; a run that ends in order writes `end` last.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    # finetune: train.finetune's kind or null; trainable_parameters: those the optimizer updates (all of
    # `parameters` without a fine-tuning method; adapters included in both with one)
    "start": ("run_name", "spec_hash", "backend", "world_size", "device", "precision", "parameters", "trainable_parameters",
              "finetune", "total_steps", "total_tokens", "stages", "resumed_from", "compile"),
    # skipped: steps of the interval whose update was refused (a non-finite loss or gradient); loss is
    # the mean over the others (null when every step was skipped)
    "train": ("loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu", "memory", "stage", "skipped"),
    # a mixture of experts (model.block.mlp kind moe), after each train event: balance_loss the layers' mean
    # balancing loss (1 when uniform), imbalance the layers' mean of the busiest expert's share over the
    # uniform share (1 when uniform), load each MoE layer's share of assignments per expert; over the interval
    "routing": ("balance_loss", "imbalance", "load"),
    "eval": ("val_loss", "val_ppl", "best_val_loss"),
    "stage": ("index", "seq_len", "mix"),
    "checkpoint": ("path", "best"),
    "sample": ("prompt", "text"),
    "log": ("level", "message"),
    "end": ("reason", "error"),
}
EVENT_KINDS = tuple(EVENT_FIELDS)
COMMON_FIELDS = ("kind", "time", "step", "tokens")
END_REASONS = ("finished", "stopped", "failed")
LOG_LEVELS = ("info", "warning", "error")

END_SEARCH_BYTES = 2**20  # how far back `end_event` looks: an end is the last line a session writes


def end_event(run_dir: str | os.PathLike[str], *, max_bytes: int = END_SEARCH_BYTES) -> dict[str, Any] | None:
    """The `end` event of the run's latest session, or None while it runs (or when it died without
    writing one).

    Reads events.jsonl backwards from its end, at most `max_bytes`: an `end` met first is the
    answer; a `start` met first means the latest session (a resume appends one to the same file)
    has not ended, whatever an earlier session wrote. A missing file gives None."""
    try:
        with open(Path(run_dir) / EVENTS_FILE, "rb") as file:
            position = file.seek(0, os.SEEK_END)
            carry, searched = b"", 0  # carry: the start of a line cut by the chunk boundary
            while position > 0 and searched < max_bytes:
                size = min(2**16, position)
                position -= size
                file.seek(position)
                lines = (file.read(size) + carry).split(b"\n")
                carry = lines.pop(0) if position > 0 else b""
                searched += size
                for line in reversed(lines):
                    found = _session_mark(line)
                    if found is not None:
                        return found if found.get("kind") == "end" else None
    except OSError:
        return None
    return None


def _session_mark(line: bytes) -> dict[str, Any] | None:
    """The event on `line` when it is a `start` or an `end`, else None."""
    if b'"end"' not in line and b'"start"' not in line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("kind") in ("start", "end") else None


# ---------------------------------------------------------------- preparation progress

# Before a new run's folder exists (prepare_run creates it last, so a refused run leaves none) the run can
# write no event: its data preparation reports in plain lines on its output instead, which the dashboard
# that launched it reads from the output log. The line is written and read here, in one format:
#     tokenizing (bytes of text): 1,234,567 of 5,000,000 (25%)
_PREPARE_LINE = re.compile(r"(?P<stage>[^:\r\n]+): (?P<done>\d[\d,]*)(?: of (?P<total>\d[\d,]*) \(\d+%\))?")


def prepare_line(stage: str, done: int, total: int | None) -> str:
    """The output line for `done` of `total` (None: unknown) units of the preparation step `stage`."""
    if total:
        return f"{stage}: {done:,} of {total:,} ({100 * done / total:.0f}%)"
    return f"{stage}: {done:,}"


def parse_prepare_line(line: str) -> tuple[str, int, int | None] | None:
    """(stage, done, total or None) of a line `prepare_line` wrote, or None for any other line."""
    found = _PREPARE_LINE.fullmatch(line.strip())
    if found is None:
        return None
    total = found.group("total")
    return found.group("stage"), int(found.group("done").replace(",", "")), int(total.replace(",", "")) if total else None


# ---------------------------------------------------------------- the lock

# A session (a training of the run, or a resume) holds LOCK_FILE with flock for its life; the file records
# the owner as JSON: pid, host, started (unix seconds), command, and a child that holds it too ("holder":
# {pid, what}: DeepSpeed's launcher). The runtime's side is tabula.runtime.runlock.RunLock.


def read_owner(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file records about its latest owner (who holds it now, or held it last), or None (no
    file, or not readable yet)."""
    for _ in range(5):  # an owner that has just locked writes its record a moment later
        try:
            fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as file:
                owner = json.loads(file.read(2**16)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except (OSError, ValueError):
            owner = None
        if isinstance(owner, dict):
            return owner
        time.sleep(0.02)
    return None


def lock_owner(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The owner of `run_dir` when a session holds it now (its record; {} when unreadable), else None.
    Takes nothing: for a watcher or a launcher that checks before starting a session."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # no lock file: no session ever took it (or it cannot be read: the session will say)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_owner(run_dir) or {}
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


# ---------------------------------------------------------------- control requests

# A request is an empty file control/<name>. The runtime looks once a step, acts at the next step,
# and deletes the file. Requests are bit flags so that ranks agree on them with one OR.
STOP, CHECKPOINT, EVAL = 1, 2, 4
REQUESTS = {"stop": STOP, "checkpoint": CHECKPOINT, "eval": EVAL}  # stop writes a checkpoint before it stops


class ControlRequestError(Exception):
    """A request that could not be written: control/ is not a folder, the request's name is taken
    by a folder, the run folder is read-only. `str()` says which run, which request and why."""


def request(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Drop the control request `name` (stop, checkpoint or eval) into `run_dir/control/`.

    The file appears atomically (written under a temporary `.<name>-*` name, then renamed), so the
    runtime never sees a half-made request. Asking twice before the runtime acts is one request.
    Returns the file's path; raises ValueError for an unknown name and ControlRequestError when the
    file cannot be written there."""
    if name not in REQUESTS:
        raise ValueError(f"unknown control request {name!r}; expected one of {', '.join(REQUESTS)}")
    folder = Path(run_dir) / CONTROL_DIR
    target = folder / name
    cannot = f"cannot ask the run in {run_dir} to {name}"
    if folder.exists() and not folder.is_dir():
        raise ControlRequestError(f"{cannot}: {folder} is not a folder, so the run reads no requests")
    if target.is_dir() and not target.is_symlink():
        raise ControlRequestError(f"{cannot}: {target} is a folder, not a request file")
    temporary = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
        os.close(fd)
        os.replace(temporary, target)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise ControlRequestError(f"{cannot}: {error.strerror or error}"
                                  + (f" ({error.filename})" if error.filename else "")) from error
    return target


def pending(run_dir: str | os.PathLike[str]) -> list[str]:
    """The requests written and not yet acted on, in the order of REQUESTS."""
    flags = ControlFolder(run_dir, create=False).poll()
    return names(flags)


def names(flags: int) -> list[str]:
    """The request names set in `flags`."""
    return [name for name, flag in REQUESTS.items() if flags & flag]


class ControlFolder:
    """The runtime's side: which requests are present (`poll`, one `os.scandir` of a small folder),
    and deleting them once acted on (`done`). `run_dir=None` (ranks other than 0) sees none.

    Nothing found in the folder stops a run: a request that is not a plain file (`control/eval` made
    as a folder, a link), one that cannot be deleted, a control/ that is a file or unreadable, are
    ignored, each described once in `take_warnings()` for the caller to log. A request that could not
    be deleted after it was acted on is ignored from then on, until the file changes."""

    def __init__(self, run_dir: str | os.PathLike[str] | None, *, create: bool = True) -> None:
        self.path = Path(run_dir) / CONTROL_DIR if run_dir is not None else None
        self._warned: set[str] = set()
        self._warnings: list[str] = []
        self._stuck: dict[str, tuple[int, int]] = {}  # name -> (inode, mtime) of a request acted on but not deleted
        if self.path is not None and create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                self._warn("folder", self._unusable(error))
                self.path = None

    def take_warnings(self) -> list[str]:
        """The problems met since the last call, each described once in the folder's life."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def poll(self) -> int:
        """The requests present now, as flags (0 when none). Other file names (a request being
        written, anything else) are left alone."""
        if self.path is None:
            return 0
        flags = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    flag = REQUESTS.get(entry.name, 0)
                    if flag and self._is_request(entry):
                        flags |= flag
        except FileNotFoundError:
            return 0
        except OSError as error:
            self._warn("folder", self._unusable(error))
            return 0
        return flags

    def _is_request(self, entry: os.DirEntry[str]) -> bool:
        try:
            if not entry.is_file(follow_symlinks=False):
                kind = "a folder" if entry.is_dir(follow_symlinks=False) else "a link" if entry.is_symlink() else "not a file"
                self._warn(f"kind:{entry.name}", f"ignored control/{entry.name}: it is {kind}, not a request file "
                           f"(a request is an empty file; remove it to send {entry.name} requests)")
                return False
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            return False  # gone between the listing and the look
        stuck = self._stuck.get(entry.name)
        if stuck is not None:
            if stuck == (stat.st_ino, stat.st_mtime_ns):
                return False
            del self._stuck[entry.name]  # a new request under the same name
        return True

    def done(self, flags: int) -> None:
        """Delete the request files for `flags` (acted upon)."""
        if self.path is None:
            return
        for name in names(flags):
            path = self.path / name
            try:
                stat = path.stat(follow_symlinks=False)
            except OSError:
                continue  # deleted already, or control/ is gone
            if not S_ISREG(stat.st_mode):
                continue  # not a request (poll said so once): a signal's stop, or another rank's flag
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                self._stuck[name] = (stat.st_ino, stat.st_mtime_ns)
                self._warn(f"delete:{name}", f"could not delete control/{name} after acting on it "
                           f"({error.strerror or error}): ignoring it until it changes")

    def clear(self) -> list[str]:
        """Delete the requests present now and return their names: at the start of a session they were
        left by an earlier one (a request sent as that run ended, or crashed), and acting on them would
        stop a resumed run at its first step."""
        flags = self.poll()
        self.done(flags)
        return names(flags)

    def _unusable(self, error: OSError) -> str:
        where = self.path if self.path is not None else CONTROL_DIR
        why = "it is not a folder" if isinstance(error, (FileExistsError, NotADirectoryError)) else (error.strerror or str(error))
        return (f"{where} cannot hold control requests ({why}): the run goes on without them "
                f"(stop it with Ctrl+C or SIGTERM, which write a checkpoint first)")

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warnings.append(message)
