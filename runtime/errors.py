"""The runtime's errors: what a caller (the `tabula` command, a notebook, a server) catches.

The runtime raises these and returns results (`loop.Outcome`); it never prints an error or picks an
exit code. `str(error)` is the message for a person, written to stand on its own after the
command's name (`tabula run: <message>`).

    TabulaError              the base: every error below, and `data.errors.DataError`
      RunInputError          a run cannot start as asked: flags, paths, run folders, checkpoints
        ResumeRefused        the spec changed in a way the checkpoint cannot follow (`changes`, `reasons`)
        LaunchError          DeepSpeed ranks cannot be started as asked (hostfile, --nproc, config)
        RunLocked            another session (`owner`: its pid, host) holds the run folder
        RunFolderDamaged     a file of a run folder (`path`) cannot be read as what it should be (`reason`)
        NotEnoughMemory      the plan needs more memory than the device has free (`needed`, `free`)

Spec errors keep their own type (`tabula.schemas.errors.SpecErrors`, a list of positioned errors):
the schemas import nothing from the runtime. A run that starts and then fails is not an error but
an `Outcome` with reason `failed`: its folder, events and checkpoints exist and tell what happened.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tabula.schemas.diff import Change


class TabulaError(Exception):
    """Base of the runtime's errors. `str()` is the message for a person."""


class RunInputError(TabulaError):
    """A run cannot start as asked: a flag, a path, a run folder or a checkpoint is wrong."""


class ResumeRefused(RunInputError):
    """`--resume` with a spec whose changes the checkpoint cannot follow (a shape changed, ...).

    `run_name`: the run asked for; `changes`: every change against the spec it was trained with;
    `reasons`: one line per incompatible change, each starting with its spec path."""

    def __init__(self, run_name: str, changes: Sequence[Change], reasons: Sequence[str]) -> None:
        self.run_name = run_name
        self.changes = tuple(changes)
        self.reasons = tuple(reasons)
        super().__init__("cannot resume with these changes:\n" + "\n".join(f"  {reason}" for reason in self.reasons)
                         + "\nStart a new run instead (without --resume).")


class LaunchError(RunInputError):
    """The DeepSpeed ranks cannot be started as asked (a hostfile, --nproc, the backend, the config)."""


class RunLocked(RunInputError):
    """The run folder is held by another session (a training writing it now). `owner` is what that session
    recorded in the lock file (`pid`, `host`, `started`, `command`), or None when it could not be read."""

    def __init__(self, run_dir: Path, owner: Mapping[str, Any] | None) -> None:
        self.run_dir = Path(run_dir)
        self.owner = dict(owner) if owner else None
        super().__init__(f"{self.run_dir} is in use by another session ({describe_owner(self.owner)}): two sessions "
                         f"would interleave its events and checkpoints. Wait for it to end, or stop it "
                         f"(`touch {self.run_dir}/control/stop`).")


def describe_owner(owner: Mapping[str, Any] | None) -> str:
    """`pid 123 on host gpu-1, since 2026-11-28 10:15:00`, from a lock file's record."""
    if not owner:
        return "its pid and host are not recorded yet"
    import time

    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    holder = owner.get("holder")
    if isinstance(holder, dict):
        text += f" with its {holder.get('what', 'child')}, pid {holder.get('pid', '?')}"
    started = owner.get("started")
    if isinstance(started, (int, float)):
        text += f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
    return text


class RunFolderDamaged(RunInputError):
    """A file of a run folder cannot be read as what it should be: `path` (the file), `reason` (what is wrong)."""

    def __init__(self, path: Path, reason: str, hint: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path} {reason}" + (f"; {hint}" if hint else ""))


class NotEnoughMemory(RunInputError):
    """The plan needs more memory per rank than the device has free. `needed` (bytes, all the ranks on
    this device), `free` (bytes), `parts` (bytes per rank by part, as `tabula plan` lists them)."""

    def __init__(self, message: str, *, needed: int, free: int, parts: Mapping[str, int]) -> None:
        self.needed, self.free, self.parts = needed, free, dict(parts)
        super().__init__(message)
