"""The cached forward of each kind of layer, dispatched per layer by the module it runs.

`LAYERS` (a tabula.schemas.registry.Registry) maps a layer kind to a `LayerKind` class (instantiated with
no arguments, once per layer, by the Decoder) with

    prepare(module, options) -> aux         once per Decoder: anything derived from the weights
                                            (MLA's absorbed matrices); None if nothing
    new_state(module, aux, batch, ctx) -> LayerState
                                            an empty state for `batch` rows (cache.py)
    forward(module, aux, x, state, ctx) -> y
                                            x (B, T, C) the normed input of the layer's T new tokens,
                                            y (B, T, C) its output; reads and extends `state`

Padding: a step's T tokens may include padding at a row's end (`ctx.n_valid[b]` real ones): a kind must
compute over them but never let them into its state (a recurrent state is the one after the last real
token). Rows are independent: a state must support `select` and `concat_with` (rows leaving and joining).

A module's kind is `kind_of(module)`: its `cache_kind` attribute when it has one, else the kind its
class is registered under in the compiler's block registries (compiler/blocks: mha/gqa/mqa ->
CausalSelfAttention, mla -> LatentAttention), else its class name. So a new layer (a Mamba mixer) is
one `@LAYERS.register("<its kind>")` class here; the Decoder dispatches per layer, never by the
model's global spec, so layers of different kinds and windows mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import nn

from tabula.schemas.registry import Registry

from .cache import LayerState


@dataclass
class Options:
    """Decoder-wide choices the layer kinds read.

    absorb: MLA decodes with its up-projections absorbed (True), expands keys and values from the cached
            latents (False), or absorbs where it can (None: not with QK-norm, whose norm spans both parts).
    slack:  extra slots of a rolling (sliding-window) buffer: how many tokens a caller may roll back.
    """

    absorb: bool | None = None
    slack: int = 16


@dataclass
class StepContext:
    """What every layer of one step shares.

    positions: (B, T) absolute position of each new token (virtual tokens count);
    lengths:   (B,) tokens each row's cache held before the step; n_valid: (B,) new tokens that are real
               (the rest of the T are padding: computed, never stored);
    rope:      the model's (cos, sin) tables gathered at `positions`, each (B, T, rotary_dim), or None;
    window:    this layer's sliding window (None: full attention), set by the Decoder per layer;
    masks:     the step's masks over linear buffers, built once a step and shared by the layers (mask());
    longest, uniform: max(lengths) and whether every row has that length, read once a step (None: the
               buffers read them from `lengths`).
    """

    positions: torch.Tensor
    lengths: torch.Tensor
    n_valid: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None
    rope_tables: tuple[torch.Tensor, torch.Tensor] | None
    options: Options
    window: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    masks: dict[tuple[int | None, int], torch.Tensor | None] = field(default_factory=dict)
    longest: int | None = None
    uniform: bool | None = None

    def mask(self, key_positions: torch.Tensor, rolling: bool) -> torch.Tensor | None:
        """step_mask for this layer's keys. A linear buffer's keys are positions 0..S-1 in every layer of the
        step, so its mask depends on (window, S) only and is built once a step; a rolling buffer's is its own."""
        if rolling:
            return step_mask(key_positions, self.positions, self.window, rolling)
        key = (self.window, key_positions.size(1))
        if key not in self.masks:
            every_key = self.uniform and self.window is None and self.positions.size(1) == 1  # step_mask's None case
            self.masks[key] = None if every_key else step_mask(key_positions, self.positions, self.window, rolling)
        return self.masks[key]


class LayerKind(Protocol):
    def prepare(self, module: nn.Module, options: Options) -> Any: ...

    def new_state(self, module: nn.Module, aux: Any, batch: int, ctx: StepContext | None, *, window: int | None,
                  options: Options) -> LayerState: ...

    def forward(self, module: nn.Module, aux: Any, x: torch.Tensor, state: Any, ctx: StepContext) -> torch.Tensor: ...


LAYERS: Registry[type[LayerKind]] = Registry("cached layer")


def kind_of(module: nn.Module) -> str:
    """The kind a layer module's cached forward is registered under (see the module docstring)."""
    explicit = getattr(module, "cache_kind", None)
    if isinstance(explicit, str):
        return explicit
    from tabula.compiler.blocks import registry as blocks

    for family in (blocks.ATTENTION, blocks.MLP, blocks.NORM, blocks.POSITION):
        for kind, cls in family.items():
            if type(module) is cast(Any, cls) and kind in LAYERS:
                return kind
    return type(module).__name__


def layer_kind(module: nn.Module) -> LayerKind:
    """A new LayerKind for a module; NotImplementedError naming the module when none is registered."""
    kind = kind_of(module)
    if kind not in LAYERS:
        raise NotImplementedError(f"no cached forward for a {type(module).__name__} layer (kind {kind!r}); "
                                  f"known: {', '.join(LAYERS.kinds())}")
    return LAYERS[kind]()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half layout, as compiler/blocks/position.apply_rope) of x (B, T, nh, hs) by per-row
    tables cos, sin (B, T, hs)."""
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def step_mask(key_positions: torch.Tensor, positions: torch.Tensor, window: int | None, rolling: bool) -> torch.Tensor | None:
    """key_mask, or None where every key is visible: one new token a row, rows of one length, a linear buffer
    (whose view ends at that token) and no window. Saves building a mask at every decoding step."""
    T, lengths = positions.size(1), positions[:, 0]
    if T == 1 and window is None and not rolling and bool((lengths == lengths[0]).all()):
        return None
    return key_mask(key_positions, positions, window)


def key_mask(key_positions: torch.Tensor, positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, 1, T, S) boolean mask: query at position p may see a key at position j when 0 <= j <= p (and
    p - j < window). key_positions (B, S) (-1: no key), positions (B, T)."""
    q = positions[:, :, None]  # (B, T, 1)
    k = key_positions[:, None, :]  # (B, 1, S)
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask = mask & (q - k < window)
    return mask[:, None]


# The kinds register themselves when their modules are imported.
from . import attention, latent, recurrent  # noqa: E402,F401
