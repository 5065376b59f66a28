"""tabula: declarative language-model training experiments.

The small public API, imported lazily so that `import tabula` stays light:

    spec = tabula.load_spec("specs/quickstart.yaml", overrides=["model.n_layers=2"])
    model = tabula.build_model(spec)          # on the meta device; .materialize("cpu", seed)
    model = tabula.load_model("runs/quickstart-20261128-101500")
    generator = tabula.load_generator("runs/quickstart-20261128-101500")   # .generate(text) / .stream(text)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_spec": "tabula.schemas.loader",
    "Spec": "tabula.schemas.spec",
    "SpecErrors": "tabula.schemas.errors",
    "build_model": "tabula.compiler",
    "make_plan": "tabula.compiler",
    "load_model": "tabula.runtime.checkpoint",
    "load_generator": "tabula.runtime.inference",
    "SamplingParams": "tabula.runtime.inference",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tabula' has no attribute {name!r}")
