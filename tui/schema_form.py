"""The spec schema read as a form: which widget each field gets, from its type alone.

`form_fields(Model)` walks a pydantic model's `model_fields` and returns one `FormField` per
field, classified by its annotation:

    int, float, str, TokenCount, Fraction, "auto" | int  -> scalar  (an Input, parsed as YAML)
    Literal[...] (also with bool, or None)               -> choice  (a Select)
    bool                                                 -> switch  (a Switch)
    a nested model                                       -> model   (a Collapsible section)
    a union of models told apart by `kind`               -> union   (a Select that swaps the sub-form)
    list of models or unions                             -> list    (rows to add and remove)
    dict of str to models or unions                      -> dict    (named rows to add and remove)
    anything else (list[str], tuple, dict[str, float])   -> yaml    (an Input holding flow YAML)

Nothing here names a spec field, so a field added to the schema appears in the wizard as is.
Imports pydantic only (no textual), so it is tested on its own.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

SCALAR, CHOICE, SWITCH, MODEL, UNION, LIST, DICT, YAML = "scalar", "choice", "switch", "model", "union", "list", "dict", "yaml"
NO_DEFAULT = object()


@dataclass(frozen=True)
class FormField:
    """How one field (or one list item / dict value: `name` is then "") is edited."""

    name: str
    widget: str  # one of SCALAR ... YAML
    description: str = ""
    required: bool = False
    default: Any = NO_DEFAULT  # a plain (JSON-like) value, or NO_DEFAULT
    nullable: bool = False
    choices: tuple[Any, ...] = ()  # CHOICE: the values, None included when nullable
    model: type[BaseModel] | None = None  # MODEL
    members: dict[str, type[BaseModel]] = field(default_factory=dict)  # UNION: kind -> model
    item: FormField | None = None  # LIST, DICT: how each item is edited
    text: bool = False  # SCALAR: a plain string (not parsed as YAML)

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT


def form_fields(model: type[BaseModel], *, skip: tuple[str, ...] = ()) -> list[FormField]:
    """One FormField per field of `model`, in declaration order, leaving out `skip`."""
    return [describe(name, info) for name, info in model.model_fields.items() if name not in skip]


def describe(name: str, info: FieldInfo) -> FormField:
    """Classify the field `name` from its annotation, constraints and default."""
    base = classify(info.annotation, name=name)
    default = _default(info)
    nullable = base.nullable or default is None
    choices = base.choices + ((None,) if nullable and base.widget == CHOICE and None not in base.choices else ())
    return FormField(
        name=name, widget=base.widget, description=info.description or "", required=info.is_required(),
        default=default, nullable=nullable, choices=choices, model=base.model, members=base.members,
        item=base.item, text=base.text,
    )


def classify(annotation: Any, *, name: str = "") -> FormField:
    """The widget for a bare annotation (no description or default)."""
    annotation = _strip_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [_strip_annotated(arg) for arg in typing.get_args(annotation)]
        nullable = type(None) in args
        args = [arg for arg in args if arg is not type(None)]
        if len(args) == 1:
            inner = classify(args[0], name=name)
            return _replace(inner, nullable=True) if nullable else inner
        members = _kind_members(args)
        if members:
            return FormField(name, UNION, members=members, nullable=nullable)
        values = _choice_values(args)
        if values is not None:
            return FormField(name, CHOICE, choices=tuple(values), nullable=nullable)
        return FormField(name, SCALAR, nullable=nullable)
    if origin is Literal:
        return FormField(name, CHOICE, choices=typing.get_args(annotation))
    if annotation is bool:
        return FormField(name, SWITCH)
    if annotation is str:
        return FormField(name, SCALAR, text=True)
    if annotation in (int, float):
        return FormField(name, SCALAR)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return FormField(name, MODEL, model=annotation)
    if origin is list:
        item = classify(typing.get_args(annotation)[0])
        return FormField(name, LIST, item=item) if item.widget in (MODEL, UNION) else FormField(name, YAML)
    if origin is dict:
        item = classify(typing.get_args(annotation)[1])
        return FormField(name, DICT, item=item) if item.widget in (MODEL, UNION) else FormField(name, YAML)
    return FormField(name, YAML)


def kind_of(model: type[BaseModel]) -> str | None:
    """The `kind` a union member answers to (its Literal), or None for models without one."""
    info = model.model_fields.get("kind")
    if info is None or typing.get_origin(info.annotation) is not Literal:
        return None
    return typing.get_args(info.annotation)[0]


def default_kind(members: dict[str, type[BaseModel]]) -> str | None:
    """The kind a union value without `kind` is: the one member whose `kind` may be left out (the
    transformer block), else None."""
    defaults = [kind for kind, member in members.items() if not member.model_fields["kind"].is_required()]
    return defaults[0] if len(defaults) == 1 else None


def _kind_members(args: list[Any]) -> dict[str, type[BaseModel]]:
    if not all(isinstance(arg, type) and issubclass(arg, BaseModel) and kind_of(arg) for arg in args):
        return {}
    return {kind_of(arg): arg for arg in args}


def _choice_values(args: list[Any]) -> list[Any] | None:
    values: list[Any] = []
    for arg in args:
        if typing.get_origin(arg) is Literal:
            values.extend(typing.get_args(arg))
        elif arg is bool:
            values.extend((True, False))
        else:
            return None
    return values


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _default(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return _plain(info.default)
    if info.default_factory is not None:
        try:
            return _plain(info.default_factory())  # type: ignore[call-arg]
        except TypeError:
            return NO_DEFAULT
    return NO_DEFAULT


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _replace(form_field: FormField, **changes: Any) -> FormField:
    return replace(form_field, **changes)
