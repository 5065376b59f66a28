"""What a kind tells the Hugging Face export (compiler/hf.py) about its module.

Every registered block class (compiler/blocks/) names, in its class attribute `hf`, either an
`HFMapping` (how its module appears in a transformers architecture: which architecture it implies,
what in its spec does not map there, its config.json keys, its tensors' names) or `NoHF(reason)`,
saying explicitly that the kind has no equivalent. Never imports transformers.
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
