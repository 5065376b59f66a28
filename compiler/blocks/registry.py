"""A registry maps a spec `kind` to the function that builds its module.

Adding a variant is one builder function and one `@REGISTRY.register("kind")` line next to it.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Builders by kind for one family of blocks (attention, mlp, norm); refuses duplicates."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._builders: dict[str, Builder] = {}

    def register(self, kind: str) -> Callable[[Builder], Builder]:
        def add(builder: Builder) -> Builder:
            if kind in self._builders:
                raise ValueError(f"{self.family} kind {kind!r} is registered twice")
            self._builders[kind] = builder
            return builder

        return add

    def __getitem__(self, kind: str) -> Builder:
        if kind not in self._builders:
            raise KeyError(f"no {self.family} builder for kind {kind!r}; known: {sorted(self._builders)}")
        return self._builders[kind]

    def kinds(self) -> list[str]:
        return sorted(self._builders)


ATTENTION: Registry = Registry("attention")
MLP: Registry = Registry("mlp")
NORM: Registry = Registry("norm")
POSITION: Registry = Registry("position")
