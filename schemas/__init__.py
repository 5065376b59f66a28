"""tabula.schemas: the spec language. Imports no torch.

Public names: `Spec` (the validated, frozen spec), `load_spec` / `load_spec_text` (file or text
+ extends + overrides -> Spec, or SpecErrors), `SpecError`/`SpecErrors` (errors as values),
`canonical_yaml`/`spec_hash`, `diff_specs`, `json_schema`. All but `Spec` are imported when
first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .spec import Spec

_LAZY = {
    "load_spec": "loader", "load_spec_text": "loader", "position_of": "loader",
    "SpecError": "errors", "SpecErrors": "errors",
    "canonical_dict": "canonical", "canonical_yaml": "canonical", "spec_hash": "canonical",
    "diff_specs": "diff", "Change": "diff", "json_schema": "jsonschema",
}

__all__ = ["Spec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
