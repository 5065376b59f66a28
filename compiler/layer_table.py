"""The model layer by layer, as `tabula plan` shows it: runs of equal consecutive layers, each with
the spec path of its block (model.block or a model.layers override), its kinds, its parameters and
the parameters one token runs through (fewer in a mixture of experts). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from tabula.schemas.model import Model as ModelSpec


@dataclass(frozen=True)
class LayerRun:
    """Layers first..last (inclusive) of one block spec."""

    first: int
    last: int
    path: str  # model.block or model.layers.<j>.block
    summary: str  # the block's kinds in a few words
    parameters: int  # per layer
    active: int  # per layer, per token

    @property
    def span(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def layer_runs(model: ModelSpec) -> list[LayerRun]:
    """The layers of `model` as runs of consecutive layers that share a block spec."""
    runs: list[LayerRun] = []
    d = model.d_model
    for i, block in enumerate(model.layer_blocks):
        path = model.block_path(i)
        if runs and runs[-1].path == path and runs[-1].last == i - 1:
            runs[-1] = LayerRun(runs[-1].first, i, path, runs[-1].summary, runs[-1].parameters, runs[-1].active)
        else:
            runs.append(LayerRun(i, i, path, block.summary(), block.parameters(d), block.active_parameters(d)))
    return runs
