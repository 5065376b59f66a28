"""The four block registries: a spec `kind` -> the module class that implements it.

A registered class provides:

    build(spec, **widths) -> module   classmethod; the narrow sub-spec and the widths it needs
    init_weights(init)                initialises the module's own parameters (blocks/init.py)
    hf                                its HFMapping, or NoHF(reason) where it has none (hf_mapping.py)

and its spec class (schemas/blocks/) the torch-free facts. The Registry type is the torch-free
one every family of kinds shares (tabula.schemas.registry).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from tabula.schemas.registry import Registry

from ..hf_mapping import HFMapping, NoHF


class BlockClass(Protocol):
    """A registered block class, as the registries hold it (the class itself)."""

    hf: HFMapping | NoHF

    def build(self, spec: Any, *args: Any, **kwargs: Any) -> nn.Module: ...


ATTENTION: Registry[BlockClass] = Registry("attention")
MLP: Registry[BlockClass] = Registry("mlp")
NORM: Registry[BlockClass] = Registry("norm")
POSITION: Registry[BlockClass] = Registry("position")

__all__ = ["ATTENTION", "MLP", "NORM", "POSITION", "BlockClass", "Registry"]
