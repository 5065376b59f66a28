"""A planted non-finite loss for the tests of `train.on_nonfinite`, injected from outside the loop
(production code carries no test hook).

In-process, over the local engine (`monkeypatch` undoes it):

    plant_nan(monkeypatch, LocalEngine, 5)      # this process's 5th optimizer step has a NaN loss, once

In a `tabula run` subprocess: `subprocess_env(folder, 10)` writes a sitecustomize.py into `folder` and
returns the environment (PYTHONPATH, TABULA_TEST_NAN_AT_STEP) that makes the command's 10th step NaN.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

NAN_ENV = "TABULA_TEST_NAN_AT_STEP"
TESTS = Path(__file__).resolve().parent

SITECUSTOMIZE = f"""\
import os
if os.environ.get({NAN_ENV!r}):
    import planted_nan
    planted_nan.install(int(os.environ[{NAN_ENV!r}]))
"""


def poison_next_forward(model: Any) -> None:
    """Make the model's next forward return a NaN loss (once)."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        handle.remove()
        if isinstance(output, tuple):
            logits, loss = output
            return logits, loss * float("nan")
        return output * float("nan")

    handle = model.register_forward_hook(hook)


def nan_at_step(engine_class: type, at_step: int) -> dict[str, Callable[..., Any]]:
    """Replacements for `engine_class.forward_backward` and `.step`: the `at_step`-th optimizer step
    (counted over this process from now) runs with a NaN loss, once; a rollback replaying it finds
    clean data, as a real transient fault would."""
    forward_backward, step = engine_class.forward_backward, engine_class.step  # type: ignore[attr-defined]
    seen = {"steps": 0, "planted": False}

    def planted_forward_backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not seen["planted"] and seen["steps"] + 1 == at_step:
            seen["planted"] = True
            poison_next_forward(self.model)
        return forward_backward(self, *args, **kwargs)

    def counted_step(self: Any, lr: float) -> Any:
        seen["steps"] += 1
        return step(self, lr)

    return {"forward_backward": planted_forward_backward, "step": counted_step}


def plant_nan(monkeypatch: Any, engine_class: type, at_step: int) -> None:
    for name, method in nan_at_step(engine_class, at_step).items():
        monkeypatch.setattr(engine_class, name, method)


def install(at_step: int) -> None:
    """For a subprocess's sitecustomize: plant the NaN into the local engine for the whole process."""
    from tabula.runtime.engine import LocalEngine

    for name, method in nan_at_step(LocalEngine, at_step).items():
        setattr(LocalEngine, name, method)


def subprocess_env(folder: Path, at_step: int) -> dict[str, str]:
    """The environment additions that plant a NaN at `at_step` into a `tabula` subprocess."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(folder), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path, NAN_ENV: str(at_step)}
