"""Every `kind` the schema accepts for optimizers, schedules, sources, filters and tokenizers has a
runtime implementation registered, and every registered kind is one the schema accepts."""

from __future__ import annotations

import typing

import pytest

from tabula.runtime.data.filters import FILTERS
from tabula.runtime.data.sources import SOURCES
from tabula.runtime.data.tokenizer import LOADERS, TRAINERS
from tabula.runtime.optimizers import OPTIMIZERS
from tabula.runtime.schedules import SCHEDULES
from tabula.schemas import data, train
from tabula.schemas.registry import Registry


def schema_kinds(union) -> set[str]:
    """The `kind` literals of a discriminated union `Annotated[Union[A, B, ...], Field(discriminator="kind")]`."""
    members = typing.get_args(typing.get_args(union)[0])
    return {kind for member in members for kind in typing.get_args(member.model_fields["kind"].annotation)}


@pytest.mark.parametrize(("union", "registries"), [
    (train.Optimizer, [OPTIMIZERS]),
    (train.Schedule, [SCHEDULES]),
    (data.Source, [SOURCES]),
    (data.Filter, [FILTERS]),
    (data.Tokenizer, [TRAINERS, LOADERS]),
], ids=["optimizer", "schedule", "source", "filter", "tokenizer"])
def test_schema_kinds_and_registered_kinds_are_the_same(union, registries):
    registered = [kind for registry in registries for kind in registry]
    assert all(isinstance(registry, Registry) for registry in registries)
    assert len(registered) == len(set(registered)), "a tokenizer kind is both trained and loaded"
    assert set(registered) == schema_kinds(union)
    assert len(schema_kinds(union)) >= 3


def test_a_kind_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        OPTIMIZERS.register("adamw")(lambda spec, groups, device: None)
