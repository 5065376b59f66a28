"""The block registries (a layer's kind, and the four kinds a transformer block is made of): a spec `kind` -> the module class that implements it.

A registered class provides:

    build(spec, **widths) -> module   classmethod; the narrow sub-spec and the widths it needs
    init_weights(init)                initialises the module's own parameters (blocks/init.py)
    hf                                its HFMapping, or NoHF(reason) where it has none (hf_mapping.py)

and its spec class (schemas/blocks/) the torch-free facts. The Registry type is the torch-free
one every family of kinds shares (tabula.schemas.registry).
"""

from __future__ import annotations

from typing import Any, Protocol

from tabula.schemas.registry import Registry

from ..hf_mapping import HFMapping, NoHF
from .init import WeightInit


class BlockModule(Protocol):
    """What a registered class builds, as its users see it: an nn.Module, called with its
    inputs, that initialises its own parameters."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def init_weights(self, init: WeightInit) -> None: ...


class BlockClass(Protocol):
    """A registered block class, as the registries hold it (the class itself)."""

    @property
    def hf(self) -> HFMapping | NoHF: ...  # read-only: each class holds its own mapping's subclass

    def build(self, spec: Any, *args: Any, **kwargs: Any) -> BlockModule: ...


BLOCK: Registry[BlockClass] = Registry("block")  # a layer: build(spec, d_model=, dropout=); forward(x, rope, mask, prefix)
ATTENTION: Registry[BlockClass] = Registry("attention")
MLP: Registry[BlockClass] = Registry("mlp")
NORM: Registry[BlockClass] = Registry("norm")
POSITION: Registry[BlockClass] = Registry("position")

__all__ = ["BLOCK", "ATTENTION", "MLP", "NORM", "POSITION", "BlockClass", "BlockModule", "Registry"]
