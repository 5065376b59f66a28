"""The runtime's errors: what a caller (the `tabula` command, a notebook, a server) catches.

The runtime raises these and returns results (`loop.Outcome`); it never prints an error or picks an
exit code. `str(error)` is the message for a person, written to stand on its own after the
command's name (`tabula run: <message>`).

    TabulaError              the base: every error below, and `data.errors.DataError`
      RunInputError          a run cannot start as asked: flags, paths, run folders, checkpoints
        ResumeRefused        the spec changed in a way the checkpoint cannot follow (`changes`, `reasons`)
        LaunchError          DeepSpeed ranks cannot be started as asked (hostfile, --nproc, config)

Spec errors keep their own type (`tabula.schemas.errors.SpecErrors`, a list of positioned errors):
the schemas import nothing from the runtime. A run that starts and then fails is not an error but
an `Outcome` with reason `failed`: its folder, events and checkpoints exist and tell what happened.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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
