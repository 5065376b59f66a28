"""pydantic's validation errors rewritten in the spec's own words: a spec path the user wrote,
what was expected, what was found, and the closest valid key or kind for a typo.

pydantic's `loc` mixes the user's keys with its own tags (a discriminated union adds the kind,
`gqa`; a plain union adds `int`, `literal['auto']`); they are stripped by walking the data
along the location. Cross-field checks (`base.field_error`) carry the offending field's path in
`ctx["field"]`, relative to the model that raised them; it is appended here.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from typing import Any, Callable, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import SpecError

# Looks up where a path was written: (path, want_key) -> (file, line, column, line_text) or None.
Locate = Callable[[tuple[Any, ...], bool], "tuple[str, int, int, str | None] | None"]

_TYPE_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "none_required": "null", "finite_number": "a finite number",
}

_PATTERNS = {  # the spec's name patterns, in words
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$": "letters, digits, '.', '_' and '-', starting with a letter or digit",
    r"^[A-Za-z_][A-Za-z0-9_.-]*$": "letters, digits, '.', '_' and '-', starting with a letter or '_'",
}
_BOUNDS = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
           "less_than_equal": "at most"}
_BOUND_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def spec_errors_from(error: ValidationError, data: Any, root: type[BaseModel], locate: Locate) -> list[SpecError]:
    """Every pydantic error of validating `data` against `root`, as SpecErrors with positions."""
    found: list[SpecError] = []
    union_members: dict[tuple[Any, ...], list[SpecError]] = {}
    for raw in error.errors(include_url=False):
        converted, is_union_member = _convert(raw, data, root, locate)
        if is_union_member:
            union_members.setdefault(converted.path, []).append(converted)
        else:
            found.append(converted)
    for path, members in union_members.items():
        # A mapping given to `bool | Model` fails the bool member too; the errors inside the
        # mapping (deeper paths) say what is wrong with it.
        if not any(error.path[: len(path)] == path and len(error.path) > len(path) for error in found):
            found.append(_merge_union(members))
    return list(dict.fromkeys(found))  # one error once, even where pydantic reports it twice


def _convert(raw: ErrorDetails, data: Any, root: type[BaseModel], locate: Locate) -> tuple[SpecError, bool]:
    kind, ctx, value = raw["type"], raw.get("ctx") or {}, raw.get("input")
    path, _, skipped_last, is_key = _walk(raw["loc"], data, keep_last=kind == "missing")
    if isinstance(ctx.get("field"), (list, tuple)):  # a cross-field check names the field it is about
        path = path + tuple(ctx["field"])
        value = _get(data, path)
    message, expected, suggestion = _describe(kind, raw, ctx, path, data, root)
    want_key = kind == "extra_forbidden" or is_key or bool(ctx.get("key"))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # a field's name ('kind'), or a function's ("kind()": base.kind_with_default)
        discriminator = str(ctx.get("discriminator", "kind")).strip("'").removesuffix("()")
        if kind == "union_tag_invalid":
            path = path + (discriminator,)
    item_missing = kind == "missing" and bool(raw["loc"]) and bool(path) and raw["loc"][-1] != path[-1]
    where_path = path[:-1] if kind == "missing" and not item_missing else path
    where = _nearest(where_path, locate, want_key=want_key or (kind == "missing" and not item_missing))
    found = None if kind in ("missing", "union_tag_not_found") else _show(value)
    if kind == "union_tag_invalid":
        found = _show(_get(data, path))  # the kind as written (ctx's tag is its str())
    if (kind == "extra_forbidden" or ctx.get("key")) and path:
        found = repr(path[-1])
    error = SpecError(
        message, path=path, file=where[0] if where else None, line=where[1] if where else None,
        column=where[2] if where else None, expected=expected, found=found, suggestion=suggestion,
        source_line=where[3] if where else None)
    return error, skipped_last and kind not in ("missing", "extra_forbidden") and "field" not in ctx


def _walk(loc: tuple[Any, ...], data: Any, keep_last: bool) -> tuple[tuple[Any, ...], Any, bool, bool]:
    """The user's path along `loc` (pydantic's tags dropped), the value there, whether the last
    location part was a tag (an error of one member of a plain union) and whether the error is
    about a mapping key rather than its value."""
    path: list[Any] = []
    node, skipped_last, is_key = data, False, False
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            path.append(part)
            node, skipped_last = node[part], False
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node, skipped_last = node[part], False
        elif part == "[key]":
            is_key = True
        elif last and keep_last and isinstance(node, dict):
            path.append(part)
            node = None
        else:
            skipped_last = last
    return tuple(path), node, skipped_last, is_key


def lookup(data: Any, path: tuple[Any, ...]) -> tuple[bool, Any]:
    """(found, value) at spec `path` in the plain data parsed from YAML (mappings and lists)."""
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False, None
    return True, data


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    return lookup(data, path)[1]


def _nearest(path: tuple[Any, ...], locate: Locate, want_key: bool) -> tuple[str, int, int, str | None] | None:
    """The position of `path`, or of its nearest ancestor that has one."""
    if want_key:
        where = locate(path, True)
        if where is not None:
            return where
    for cut in range(len(path), -1, -1):
        where = locate(path[:cut], False)
        if where is not None:
            return where
    return None


def _describe(kind: str, raw: ErrorDetails, ctx: dict[str, Any], path: tuple[Any, ...], data: Any,
              root: type[BaseModel]) -> tuple[str, str | None, str | None]:
    """(message, expected, suggestion) for one error."""
    where = ".".join(str(part) for part in path[:-1]) or "the spec"
    if kind == "missing" and raw["loc"] and raw["loc"][-1] != path[-1]:  # an item of a fixed-length list
        whole = ".".join(str(part) for part in path)
        return f"{whole} has too few items (item {raw['loc'][-1]} is missing)", None, None
    if kind == "missing":
        return f"missing required key {path[-1]!r} in {where}", f"a value for {path[-1]}", None
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERNS:
        return f"{_show(raw.get('input'))} is not a valid name", _PATTERNS[ctx["pattern"]], None
    if kind == "string_too_long" and isinstance(raw.get("input"), str):
        limit = ctx.get("max_length")
        return f"{len(raw['input']):,} characters is too long: at most {limit}", f"at most {limit} characters", None
    if kind == "extra_forbidden":
        model = model_at(root, path[:-1], data)
        keys = sorted(model.model_fields, key=lambda name: name != "kind") if model else []
        suggestion = _closest(str(path[-1]), keys) or _elsewhere(root, str(path[-1]))
        expected = f"one of the keys of {where}: {', '.join(keys)}" if keys else None
        return f"unknown key {path[-1]!r} in {where}", expected, suggestion
    if kind == "union_tag_invalid":
        tags = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        section = ".".join(str(part) for part in path) or "the spec"
        given = raw.get("input")  # the mapping: pydantic's ctx has the kind stringified (None -> 'None')
        tag = given.get("kind", ctx.get("tag")) if isinstance(given, dict) else ctx.get("tag")
        if not isinstance(tag, str):
            return f"kind names one of {', '.join(tags)}; found {_show(tag)}", "one of: " + ", ".join(tags), None
        return f"unknown kind {tag!r} for {section}", "one of: " + ", ".join(tags), _closest(tag, tags)
    if kind == "union_tag_not_found":
        tags = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        if not tags:
            tags = _kinds_at(root, path, data)
        choices = ", ".join(tags)
        return f"missing 'kind': say which one ({choices})", f"kind: one of {choices}" if choices else "a kind", None
    if kind == "literal_error":
        matches = re.findall(r"'([^']*)'|(\d+)", ctx.get("expected", ""))
        names = [text or number for text, number in matches]
        value = raw.get("input")
        suggestion = _closest(value, names) if isinstance(value, str) else None
        expected = ctx.get("expected")
        return f"expected {expected}, found {_show(value)}", expected, suggestion
    if kind == "spec_check":
        return raw["msg"], None, None
    if kind == "value_error":
        message = re.sub(r"^Value error, ", "", raw["msg"])
        described = re.match(r"^(an? .*), found .+$", message)  # the quantities' "a token count ..., found '12q'"
        return message, described.group(1) if described else None, None
    expected = _TYPE_EXPECTED.get(kind)
    for bound_kind, words in _BOUNDS.items():
        if kind == bound_kind:
            expected = f"a number {words} {ctx.get(_BOUND_CTX[bound_kind], '')}".strip()
    if expected:
        return f"expected {expected}, found {_show(raw.get('input'))}", expected, None
    message = raw["msg"]
    message = re.sub(r"^Input should be ", "must be ", message)
    message = re.sub(r"^String should match pattern ", "must match the pattern ", message)
    message = re.sub(r"^(List|Dictionary|Tuple) should have ", "must have ", message)
    expected = re.sub(r"^must be ", "", message) if message.startswith("must be ") else None
    return message, expected, None


def _merge_union(members: list[SpecError]) -> SpecError:
    """One error for a value that matched none of a plain union's members (`auto` or a number)."""
    if len(members) == 1:
        return members[0]
    expected = list(dict.fromkeys(member.expected for member in members if member.expected))
    first = members[0]
    suggestion = next((member.suggestion for member in members if member.suggestion), None)
    joined = " or ".join(expected) if expected else "another value"
    return SpecError(f"expected {joined}, found {first.found}", path=first.path, file=first.file, line=first.line,
                     column=first.column, expected=joined, found=first.found, suggestion=suggestion,
                     source_line=first.source_line)


def _closest(word: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not matches:
        lowered = {choice.lower(): choice for choice in choices}
        matches = [lowered[word.lower()]] if word.lower() in lowered else []
    return matches[0] if matches else None


def _show(value: Any) -> str | None:
    """A value as the user would write it, kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, int) and abs(value) >= 10**60:  # str() refuses beyond 4300 digits
        return f"a number of about {int(value.bit_length() * 0.30103):,} digits" if abs(value) >= 10**300 else f"{value:.3g}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the model class at a spec path


def model_at(root: type[BaseModel], path: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the value at `path` (None where it is not a model),
    choosing a discriminated union's member by the `kind` written in `data`."""
    annotation: Any = root
    for depth, part in enumerate(path):
        here = _get(data, path[:depth])
        target = _pick(annotation, here)
        if isinstance(target, type) and issubclass(target, BaseModel):
            field = target.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
            continue
        origin, args = typing.get_origin(target), typing.get_args(target)
        if origin in (list, tuple) and args:
            annotation = args[0]
        elif origin is dict and len(args) == 2:
            annotation = args[1]
        else:
            return None
    target = _pick(annotation, _get(data, path))
    return target if isinstance(target, type) and issubclass(target, BaseModel) else None


def _elsewhere(root: type[BaseModel], key: str) -> str | None:
    """The one dotted path where a key of this name belongs (`train.batch_tokens` for a
    `batch_tokens` written under `model:`), or None where there is none or several."""
    places = [path for path in _field_paths(root) if path.rsplit(".", 1)[-1] == key]
    return places[0] if len(places) == 1 else None


@functools.lru_cache(maxsize=None)
def _field_paths(model: type[BaseModel], prefix: str = "") -> tuple[str, ...]:
    """Every field's dotted path below `model` (list items and named entries as `*`)."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        annotation, suffix = field.annotation, ""
        for _ in range(2):  # unwrap list[...] / dict[str, ...] (one level deep is all a spec has)
            members = _members(annotation)
            containers = [m for m in members if typing.get_origin(m) in (list, tuple, dict)]
            if not containers:
                break
            args = typing.get_args(containers[0])
            annotation, suffix = (args[-1] if args else None), suffix + ".*"
        for member in _members(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                paths.extend(_field_paths(member, f"{path}{suffix}."))
    return tuple(dict.fromkeys(paths))


def _kinds_at(root: type[BaseModel], path: tuple[Any, ...], data: Any) -> list[str]:
    parent = model_at(root, path[:-1], data) if path else None
    if parent is None or str(path[-1]) not in parent.model_fields:
        return []
    return [kind for member in _members(parent.model_fields[str(path[-1])].annotation) for kind in _kind_values(member)]


def _pick(annotation: Any, value: Any) -> Any:
    """Unwrap Annotated/Optional/Union down to one type, using `value`'s kind for unions of models."""
    members = _members(annotation)
    models = [member for member in members if isinstance(member, type) and issubclass(member, BaseModel)]
    if models:
        kind = value.get("kind") if isinstance(value, dict) else None
        for model in models:
            if kind in _kind_values(model):
                return model
        if kind is None:  # a union whose default kind may be left out (the transformer block, gpt2 init)
            defaults = [model for model in models if "kind" in model.model_fields and not model.model_fields["kind"].is_required()]
            if len(defaults) == 1:
                return defaults[0]
        return models[0] if len(models) == 1 else None
    containers = [member for member in members if typing.get_origin(member) in (list, tuple, dict)]
    return containers[0] if containers else (members[0] if len(members) == 1 else None)


def _members(annotation: Any) -> list[Any]:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _members(arg) if member is not type(None)]
    return [annotation]


def _kind_values(model: Any) -> list[str]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or "kind" not in model.model_fields:
        return []
    annotation = model.model_fields["kind"].annotation
    return [str(value) for value in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else []
