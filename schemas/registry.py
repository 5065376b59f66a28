"""One registry type for every family of kinds: attention, mlp, norm, position (the compiler's
blocks), optimizers, schedules, data sources, filters and tokenizers (the runtime's).

A registry maps a spec `kind` to what implements it (a builder function, a class, a module of
parts). Adding a variant is one definition and one `@REGISTRY.register("kind")` next to it.
Torch-free, so the plan, the wizard and the schema tests can walk registries without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by kind for one family; refuses a kind registered twice, and a lookup of an unknown
    kind names the known ones."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, kind: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("kind")` over the entry (returned unchanged)."""

        def add(entry: T) -> T:
            self.add(kind, entry)
            return entry

        return add

    def add(self, kind: str, entry: T) -> None:
        """Registers `entry` under `kind`; ValueError if `kind` is taken."""
        if kind in self._entries:
            raise ValueError(f"{self.family} kind {kind!r} is registered twice")
        self._entries[kind] = entry

    def __getitem__(self, kind: str) -> T:
        if kind not in self._entries:
            raise KeyError(f"no {self.family} kind {kind!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[kind]

    def get(self, kind: str) -> T | None:
        return self._entries.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def kinds(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(kind, self._entries[kind]) for kind in self.kinds()]

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, kinds={self.kinds()})"
