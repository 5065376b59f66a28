"""What a kind tells the Hugging Face export (compiler/hf.py) and import (compiler/hf_import.py)
about its module.

Every registered block class (compiler/blocks/) names, in its class attribute `hf`, either an
`HFMapping` (how its module appears in a transformers architecture, both ways: which architecture
it implies, what in its spec does not map there, its config.json keys, its tensors' names; and
back: which architectures' config.json it reads into its spec, what there it cannot express, and
its tensors from their Hugging Face names) or `NoHF(reason)`, saying explicitly that the kind has
no equivalent. Never imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from tabula.schemas.model import Model as ModelSpec


class ExportError(ValueError):
    """The model cannot be written in the asked format; `problems` lists what does not map."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ImportRefused(ValueError):
    """A Hugging Face checkpoint tabula cannot express exactly; `problems` lists each reason, as
    'config.json: key: why' or 'tensor NAME: why' lines. Nothing is approximated."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnmappedTensors(ImportRefused):
    """Tensors of a Hugging Face module with no tabula name (`names`, below the module)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__([f"tensor {name} has no tabula name" for name in names])
        self.names = names


# A config.json as transformers reads it (AutoConfig(...).to_dict(): every key, defaults filled).
HFConfig = dict[str, Any]


@dataclass(frozen=True)
class NoHF:
    """A kind with no Hugging Face equivalent; `reason` is shown after the spec path of its kind,
    e.g. 'gelu has no Hugging Face equivalent here (swiglu maps)'."""

    reason: str


class HFMapping:
    """How one kind's module maps to Hugging Face transformers. Subclasses override what applies;
    `renames` (the module's child -> the Hugging Face module's child) covers one-to-one tensors;
    `stacked` (a Hugging Face linear -> the module's linears whose weights it stacks by rows, in order)
    the ones that are several of ours (the peft export splits adapters by it)."""

    renames: ClassVar[dict[str, str]] = {}
    # The architectures whose config.json this kind's mapping reads into its spec (read_config).
    reads: ClassVar[tuple[str, ...]] = ()
    stacked: ClassVar[dict[str, tuple[str, ...]]] = {}

    def architecture(self, spec: Any, model: ModelSpec) -> str | None:
        """The architecture this kind implies (attention kinds choose it), else None."""
        return None

    def problems(self, spec: Any, model: ModelSpec, architecture: str, path: str) -> list[str]:
        """What in `spec` (at spec path `path`) does not map to `architecture`, as 'path.field: why' lines."""
        return []

    def config(self, spec: Any, model: ModelSpec, architecture: str) -> dict[str, Any]:
        """This kind's config.json keys for `architecture`."""
        return {}

    def tensors(self, spec: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module's tensors (names below the module, 'q_proj.weight') by their names below the
        Hugging Face module. Raises ExportError for a tensor with no name there."""
        out = {}
        for name, tensor in state.items():
            head, dot, rest = name.partition(".")
            if head not in self.renames:
                raise ExportError([f"parameter {name} has no Hugging Face name"])
            out[self.renames[head] + dot + rest] = tensor
        return out

    # ---------------------------------------------------------------- import: Hugging Face -> tabula

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        """This kind's spec section (plain values, as a spec file says them, `kind` included) for
        `architecture`'s `config`, and what in the config the kind cannot express ('config.json:
        key: why' lines; an empty list when it reproduces the model exactly)."""
        raise NotImplementedError(f"{type(self).__name__} reads no config.json")

    def tensors_from_hf(self, spec: Any, tensors: dict[str, torch.Tensor], config: HFConfig) -> dict[str, torch.Tensor]:
        """The inverse of `tensors`: the module's tensors by their names below the Hugging Face module
        ('q_proj.weight') -> by tabula's names below the module. `config` is the checkpoint's
        config.json (some layouts depend on it). Raises UnmappedTensors naming those with no tabula name."""
        inverse = {theirs: ours for ours, theirs in self.renames.items()}
        unmapped = [name for name in tensors if name.partition(".")[0] not in inverse]
        if unmapped:
            raise UnmappedTensors(unmapped)
        out = {}
        for name, tensor in tensors.items():
            head, dot, rest = name.partition(".")
            out[inverse[head] + dot + rest] = tensor
        return out
