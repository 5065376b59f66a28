"""One session at a time writes a run folder: the lock a session holds on it.

    lock = RunLock.acquire(run_dir)        # or RunLocked(owner's pid and host), a RunInputError
    lock_owner(run_dir)                    # who holds it now, or None (rundir_protocol: watchers use it too)
    ...                                    # train, write events and checkpoints
    lock.release()                         # or the process ends: the OS drops the lock

The lock is `flock` on `RUN_DIR/lock` (`rundir_protocol.LOCK_FILE`), held open for the session's life:
an OS lock that dies with the process, so a SIGKILL or a power cut leaves no stale lock to clear by
hand. The file stays and records the owner (pid, host, start time, command) for the message a refused
second session prints. A new run takes the lock inside its folder before the folder gets its name
(rundir.create_run); a resume takes it before it writes anything into the folder (session.prepare_run).

DeepSpeed: the launching process (`tabula run`) holds it and hands its descriptor to DeepSpeed's
launcher (runtime/launch.py, `pass_fds`), so the run stays locked while the launcher and its ranks live,
even when `tabula run` itself is killed. Ranks never take it. Under the dashboard the headless child
training process holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabula.schemas.rundir_protocol import LOCK_FILE, lock_owner, read_owner

from .errors import RunInputError, RunLocked

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock


class RunLock:
    """This process's exclusive lock on a run folder. `note` says why a folder could not be locked on a
    file system without locks (the run goes on unlocked), else None."""

    def __init__(self, run_dir: Path, file: Any, note: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._file = file
        self.note = note
        self.owner: dict[str, Any] = {}  # what the lock file records: pid, host, started, command (, holder)

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike[str], *, command: Sequence[str] | None = None) -> RunLock:
        """Lock `run_dir` (an existing folder) for this process and record its owner. Raises RunLocked
        (with the owner's pid and host) when another session holds it, RunInputError when the lock file
        cannot be created (a read-only or full file system, no permission)."""
        run_dir = Path(run_dir)
        path = run_dir / LOCK_FILE
        try:  # never through a link: a `lock` linked to another file would have that file truncated
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            why = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror or error
            raise RunInputError(f"cannot write into the run folder {run_dir}: {path.name}: {why}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunInputError(f"cannot write into the run folder {run_dir}: {path.name} is not a file")
        file = os.fdopen(fd, "r+b", buffering=0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise RunLocked(run_dir, read_owner(run_dir)) from None
        except OSError as error:
            if error.errno in UNSUPPORTED:
                return cls(run_dir, file, note=f"the file system of {run_dir} has no file locks ({error.strerror}): "
                                               f"nothing keeps a second session from writing this run at the same time")
            file.close()
            raise RunInputError(f"cannot lock the run folder {run_dir}: {error.strerror or error}") from None
        lock = cls(run_dir, file)
        lock.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                      "command": list(command) if command is not None else None}
        try:
            lock._record()
        except OSError as error:  # a full disk: the lock holds, the record says less
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                file.close()
                raise RunInputError(f"cannot write into the run folder {run_dir}: {error.strerror or error}") from None
        return lock

    def _record(self) -> None:
        self._file.seek(0)
        self._file.truncate(0)
        self._file.write((json.dumps(self.owner) + "\n").encode())

    def add_holder(self, pid: int, what: str) -> None:
        """Record a child process that holds the lock too (`what` it is: DeepSpeed's launcher), so that a
        refused session names it when this process is gone and the child goes on."""
        if self._file is None:
            return
        self.owner = {**self.owner, "holder": {"pid": pid, "what": what}}
        try:
            self._record()
        except OSError:
            pass

    @property
    def fd(self) -> int | None:
        """The locked file's descriptor (for a child process that keeps the run locked), None once released."""
        return self._file.fileno() if self._file is not None else None

    @property
    def held(self) -> bool:
        return self._file is not None

    def moved(self, run_dir: Path) -> None:
        """The folder was renamed (a new run's temporary name to its own): the lock follows the file."""
        self.run_dir = Path(run_dir)

    def release(self) -> None:
        """Drop the lock (closing the file); the record stays for the next owner to overwrite."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_unlocked(run_dir: str | os.PathLike[str]) -> None:
    """Raises RunLocked when a session holds `run_dir` now."""
    owner = lock_owner(run_dir)
    if owner is not None:
        raise RunLocked(Path(run_dir), owner)
