"""tabula.schemas: the spec language. Imports no torch.

Public names: `Spec` (the validated, frozen spec), `load_spec` (file + extends + overrides ->
Spec or errors), `SpecError`/`SpecErrors` (errors as values), `canonical_yaml`/`spec_hash`,
`diff_specs`, `json_schema`.
"""

from .spec import Spec

__all__ = ["Spec"]
