"""Ask a running training to stop, checkpoint or evaluate, through its run directory.

The runtime looks for empty files in `run_dir/control/` at each step, acts on them at the next
step and deletes them (docs/interfaces.md). Writing one is all a dashboard, a script or another
machine sharing the file system needs to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CONTROL_DIR = "control"
REQUESTS = ("stop", "checkpoint", "eval")  # stop writes a checkpoint before it stops


def request(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Drop the control file `name` (stop, checkpoint or eval) into `run_dir/control/`.

    The file appears atomically (written under a temporary name, then renamed), so the runtime
    never sees a half-made request. Asking twice before the runtime acts is one request.
    Returns the file's path; raises ValueError for an unknown request."""
    if name not in REQUESTS:
        raise ValueError(f"unknown control request {name!r}; expected one of {', '.join(REQUESTS)}")
    folder = Path(run_dir) / CONTROL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
    os.close(fd)
    os.replace(temporary, target)
    return target


def pending(run_dir: str | os.PathLike[str]) -> list[str]:
    """The requests written and not yet acted on by the runtime."""
    folder = Path(run_dir) / CONTROL_DIR
    return [name for name in REQUESTS if (folder / name).exists()]
