"""A semantic diff of two resolved specs: which dotted paths were added, removed or changed.

It compares canonical dicts (defaults filled, quantities as numbers), so `64k` and `65536`, key
order, comments and extends-vs-inlined never show as changes. Lists compare element by element
(`data.curriculum.1.seq_len`). Each `Change` has an `impact` slot the compiler may fill in
(parameters, memory, steps, resume compatibility).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .canonical import canonical_dict, format_scalar
from .spec import Spec
from .units import format_count

SECTIONS = ("name", "seed", "model", "data", "parallel", "train", "track")
_MAX_VALUE = 100  # characters of one value on a line


@dataclass
class Change:
    """One difference: `path` dotted (`model.block.attention.n_kv_heads`), `kind` added / removed
    / changed, `old` and `new` values (None where absent; a dict or list for a whole subtree),
    and `impact`: what the change means, filled in by the compiler (None until then)."""

    path: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None
    impact: Any = None

    @property
    def section(self) -> str:
        """The top-level section the change is in: model, data, train, ..."""
        return self.path.split(".", 1)[0]

    def line(self) -> str:
        """One line as `tabula diff` prints it: `~ train.budget.tokens: 1.5M -> 3M`, `+ path: value`."""
        key = self.path.rsplit(".", 1)[-1]
        if self.kind == "added":
            return f"+ {self.path}: {inline(self.new, key)}"
        if self.kind == "removed":
            return f"- {self.path}: {inline(self.old, key)}"
        return f"~ {self.path}: {inline(self.old, key)} -> {inline(self.new, key)}"

    def as_dict(self) -> dict[str, Any]:
        """`{path, kind, old, new}` (and `impact` where filled in), JSON-able."""
        data = {"path": self.path, "kind": self.kind, "old": self.old, "new": self.new}
        if self.impact is not None:
            data["impact"] = self.impact.as_dict() if hasattr(self.impact, "as_dict") else self.impact
        return data


def diff_specs(a: Spec, b: Spec) -> list[Change]:
    """The changes that turn resolved spec `a` into `b`, in the schema's order; empty when the
    specs are equal (then their hashes are equal too)."""
    changes: list[Change] = []
    _diff(canonical_dict(a), canonical_dict(b), (), changes)
    return changes


def group_by_section(changes: list[Change]) -> dict[str, list[Change]]:
    """Changes by top-level section, sections in the spec's order (name, seed, model, data, ...)."""
    groups: dict[str, list[Change]] = {}
    order = {name: index for index, name in enumerate(SECTIONS)}
    for change in sorted(changes, key=lambda change: order.get(change.section, len(order))):
        groups.setdefault(change.section, []).append(change)
    return groups


def _diff(a: Any, b: Any, path: tuple[Any, ...], out: list[Change]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(key for key in b if key not in a)]:
            if key not in b:
                out.append(Change(_dotted(path + (key,)), "removed", old=a[key]))
            elif key not in a:
                out.append(Change(_dotted(path + (key,)), "added", new=b[key]))
            else:
                _diff(a[key], b[key], path + (key,), out)
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            if index >= len(b):
                out.append(Change(_dotted(path + (index,)), "removed", old=a[index]))
            elif index >= len(a):
                out.append(Change(_dotted(path + (index,)), "added", new=b[index]))
            else:
                _diff(a[index], b[index], path + (index,), out)
    elif not _same(a, b):
        out.append(Change(_dotted(path), "changed", old=a, new=b))


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; in a spec they are different values.
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def inline(value: Any, key: str | None = None) -> str:
    """A value on one line as YAML flow style writes it: null, true, 0.001, {kind: gqa, ...}, [1, 2].
    Under a token-count key (`until_tokens`, `batch_tokens`...) a count is written as specs write
    it: 1048576 -> 1M."""
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{name}: {inline(item, str(name))}" for name, item in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(inline(item) for item in value) + "]"
    elif key is not None and _counts_tokens(key) and isinstance(value, int) and not isinstance(value, bool):
        text = format_count(value, binary=True, exact=True)
    else:
        text = format_scalar(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _counts_tokens(key: str) -> bool:
    return key.endswith("tokens") or key == "max_chars"
