"""The base every spec model shares, and the one way cross-field checks report a field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class SpecModel(BaseModel):
    """Frozen, unknown keys rejected, values checked on assignment too."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False, validate_default=True)


def field_error(field: str | tuple[Any, ...], message: str, **context: Any) -> PydanticCustomError:
    """An error for a cross-field check, pointing at `field` (a name or a path below the model).

    The loader appends `field` to the error's location, so the user sees the exact spec path
    and line of the offending value rather than the enclosing section."""
    path = field if isinstance(field, tuple) else tuple(field.split("."))
    return PydanticCustomError("spec_check", message, {"field": list(path), **context})
