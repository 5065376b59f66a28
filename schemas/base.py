"""The base every spec model shares, and the one way cross-field checks report a field."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, model_validator
from pydantic_core import PydanticCustomError

from .limits import INT64_MAX


class SpecModel(BaseModel):
    """Frozen, unknown keys rejected, values checked on assignment too."""

    # allow_inf_nan=False: `lr: .inf` passes `gt=0` otherwise; no spec value is meant to be infinite.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False, validate_default=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `n_layers: true` as 1; a spec means no such thing. (Quoted
        # numbers, "64", stay accepted: quoting does not change a spec.) Checks, never rewrites.
        # A whole number beyond 64 bits is refused here for every field, whatever its own bounds:
        # torch, numpy and DeepSpeed hold counts, sizes and seeds in int64 and overflow past it.
        if isinstance(data, dict):
            numeric, whole = _numeric_fields(cls), _integer_fields(cls)
            for name, value in data.items():
                if isinstance(value, bool) and name in numeric:
                    raise field_error(name, f"expected a number, found {str(value).lower()}")
                if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX and name in whole:
                    raise field_error(name, f"{_magnitude(value)} is beyond the 64-bit whole numbers the run computes "
                                            f"with (at most 2**63 - 1 = {INT64_MAX})")
        return data


def field_error(field: str | tuple[Any, ...], message: str, **context: Any) -> PydanticCustomError:
    """An error for a cross-field check, pointing at `field` (a name or a path below the model).

    The loader appends `field` to the error's location, so the user sees the exact spec path
    and line of the offending value rather than the enclosing section."""
    path = field if isinstance(field, tuple) else tuple(field.split("."))
    return PydanticCustomError("spec_check", message, {"field": list(path), **context})


def _magnitude(value: int) -> str:
    """A huge whole number, short: `about 1.18e21`, or `a number of about 5,000 digits`."""
    if abs(value) >= 10**300:  # beyond float; str() refuses past 4300 digits
        return f"a number of about {int(value.bit_length() * 0.30103):,} digits"
    return "about " + f"{value:.3g}".replace("+", "")


@functools.lru_cache(maxsize=None)
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the fields that take numbers and not booleans."""
    return frozenset(name for name, field in model.model_fields.items() if _takes_number_not_bool(field.annotation))


@functools.lru_cache(maxsize=None)
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the fields that take whole numbers (a float field reads 2**64 as the float it is)."""
    return frozenset(name for name, field in model.model_fields.items() if int in _members(field.annotation))


def _takes_number_not_bool(annotation: Any) -> bool:
    members = _members(annotation)
    return bool(set(members) & {int, float}) and bool not in members


def _members(annotation: Any) -> list[Any]:
    """The plain types a field's annotation admits (Annotated, unions and literals unwrapped)."""
    members: list[Any] = []

    def collect(item: Any) -> None:
        origin = typing.get_origin(item)
        if origin is typing.Annotated:
            collect(typing.get_args(item)[0])
        elif origin in (Union, types.UnionType):
            for arg in typing.get_args(item):
                collect(arg)
        elif origin is typing.Literal:
            members.extend(type(value) for value in typing.get_args(item))
        else:
            members.append(item)

    collect(annotation)
    return members


def kind_with_default(default: str) -> Discriminator:
    """The discriminator of a union whose members are told apart by `kind`, where a mapping
    without a `kind` means `default` (for a union that replaced a single model: what was written
    before still loads). Members are annotated with `Tag(kind)`."""

    def kind(value: Any) -> Any:  # pydantic names the function in errors: "kind()"
        if isinstance(value, dict):
            return value.get("kind", default)
        return getattr(value, "kind", None)

    return Discriminator(kind)
