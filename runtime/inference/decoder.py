"""Decoder: a Transformer's forward over a Cache, T new tokens a row at a time (prefill, one token a step,
or k draft tokens to verify), dispatched per layer to the cached forwards of layers.py.

The model code (compiler/model.py) is not changed: the Decoder reads its modules (embedding, positions,
blocks' norms, mixers and MLPs, the final norm and head) and weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tabula.compiler.blocks.position import LearnedPositions, NoPositions, Rope

from .cache import Cache, KVState
from .layers import LAYERS, LayerKind, Options, StepContext, kind_of, layer_kind
from .paged import PagedBuffer
from .pool import BlockPool


class ContextFull(ValueError):
    """A step would put a row past the model's context (max_seq_len positions, virtual tokens included)."""


@dataclass
class Layer:
    """One block as the Decoder runs it: `kind` dispatched on `mixer` (its attention, or a recurrent mixer),
    `aux` what the kind prepared from the weights, `window` this layer's sliding window or None.
    `whole`: the kind runs the whole block (its forward returns the block's output, residuals included)."""

    block: nn.Module
    mixer: nn.Module
    kind: LayerKind
    aux: Any
    window: int | None
    whole: bool


def layer_window(model: nn.Module, block: nn.Module) -> int | None:
    """A layer's sliding window: the block's `window`, else its attention's, else the model's (one for all)."""
    for owner in (block, getattr(block, "attn", None)):
        if owner is not None and hasattr(owner, "window"):
            return getattr(owner, "window")
    return getattr(model, "window", None)


class Decoder:
    """Cached forward passes of `model` (a tabula Transformer, in eval mode: dropout is not applied).

    absorb: MLA decoding with absorbed up-projections (True), expanded keys and values (False), or where it
            can (None). slack: rolling-window slots beyond the window, the most a caller may roll back."""

    def __init__(self, model: Any, *, absorb: bool | None = None, slack: int = 16) -> None:
        self.model: Any = model  # a Transformer (typed loosely: nn.Module's attributes are Tensor | Module to mypy)
        self.options = Options(absorb=absorb, slack=slack)
        self.layers: list[Layer] = []
        for block in self.model.blocks:
            whole = kind_of(block) in LAYERS
            mixer = block if whole else block.attn
            kind = layer_kind(mixer)
            self.layers.append(Layer(block, mixer, kind, kind.prepare(mixer, self.options), layer_window(model, block), whole))
        self.max_len = int(self.model.max_seq_len)  # positions, virtual ones included
        self.n_virtual = int(self.model.n_virtual)

    @property
    def device(self) -> torch.device:
        device: torch.device = self.model.embed.weight.device
        return device

    # ------------------------------------------------------------ caches

    @torch.no_grad()
    def new_cache(self, batch: int, *, pool: BlockPool | None = None, seqs: list[int] | None = None) -> Cache:
        """An empty cache for `batch` rows; with prompt or prefix tuning, holding the virtual tokens
        (so each row's length starts at n_virtual). With a `pool`, the full-attention layers keep their keys
        in its blocks (paged.py), row b as the pool's sequence seqs[b] (ids the caller owns and releases);
        sliding-window layers keep their rolling buffers, recurrent ones their state."""
        device = self.device
        states = [layer.kind.new_state(layer.mixer, layer.aux, batch, None, window=layer.window, options=self.options)
                  for layer in self.layers]
        if pool is not None:
            if seqs is None or len(seqs) != batch:
                raise ValueError(f"a paged cache of {batch} rows needs one sequence id a row (got {seqs})")
            for index, (layer, state) in enumerate(zip(self.layers, states)):
                if layer.window is None and isinstance(state, KVState):
                    state.buffer = PagedBuffer(pool, index, seqs)
        cache = Cache(states, torch.zeros(batch, dtype=torch.long, device=device))
        virtual = self.model.virtual_tokens
        if virtual is None or batch == 0:
            return cache
        empty = self.model.embed(torch.zeros(batch, 0, dtype=torch.long, device=device))  # (B, 0, C)
        if virtual.keys_only:  # prefix tuning: each layer's learned keys and values at positions 0..n-1
            _, prefix = virtual(empty)
            for layer, state, (keys, values) in zip(self.layers, states, prefix):
                write = getattr(layer.kind, "write_prefix", None)
                if write is None:
                    raise NotImplementedError(f"prefix tuning's virtual keys for a {type(layer.mixer).__name__} layer")
                write(state, keys, values)
            cache.lengths = torch.full_like(cache.lengths, virtual.n)
        else:  # prompt tuning: n embeddings the blocks run over, as the first n positions
            self._blocks(cache, virtual.tokens(empty), None)
        return cache

    # ------------------------------------------------------------ forward

    @torch.no_grad()
    def forward(self, cache: Cache, input_ids: torch.Tensor, n_valid: torch.Tensor | list[int] | None = None, *,
                last_only: bool = False) -> torch.Tensor:
        """Feeds input_ids (B, T) after each row's cached tokens and returns logits (B, T, vocab) for every
        position (last_only: (B, vocab) at each row's last valid token). Row b's first n_valid[b] tokens
        are real (default all T); the rest is padding, computed and never cached. The cache's lengths
        grow by n_valid. Raises ContextFull when a row would pass max_seq_len."""
        h, valid = self._blocks(cache, self.model.embed(input_ids), n_valid)  # (B, T, C)
        if last_only:
            last = (valid - 1).clamp(min=0)
            h = h[torch.arange(h.size(0), device=h.device), last][:, None]  # (B, 1, C)
            return self.model.lm_head(self.model.norm(h))[:, 0]
        return self.model.lm_head(self.model.norm(h))

    def prefill(self, cache: Cache, prompts: list[list[int]]) -> torch.Tensor:
        """Each row's prompt (one list of ids a row, lengths may differ, none empty) in one padded pass;
        returns the logits (B, vocab) after each prompt's last token."""
        if len(prompts) != cache.batch or any(len(p) == 0 for p in prompts):
            raise ValueError(f"prefill takes one non-empty prompt a row ({cache.batch} rows, {len(prompts)} prompts)")
        T = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), T, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
        return self.forward(cache, ids.to(self.device), [len(p) for p in prompts], last_only=True)

    def step(self, cache: Cache, tokens: torch.Tensor | list[int]) -> torch.Tensor:
        """One new token a row (B,) -> logits (B, vocab) after it."""
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        return self.forward(cache, ids)[:, 0]

    def _positions(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        """x with learned positions added; RoPE's tables gathered at the positions, and whole."""
        pos = self.model.pos_embed
        where = positions.clamp(max=self.max_len - 1)  # padding past the context: any position
        if isinstance(pos, Rope):
            return x, (pos.cos[where], pos.sin[where]), (pos.cos, pos.sin)
        if isinstance(pos, LearnedPositions):
            return x + pos.weight[where], None, None
        if isinstance(pos, NoPositions):
            return x, None, None
        raise NotImplementedError(f"no cached forward for positions of {type(pos).__name__}")

    def _blocks(self, cache: Cache, x: torch.Tensor, n_valid: torch.Tensor | list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks over x (B, T, C) after the cache; returns (hidden states, n_valid as a tensor)."""
        B, T, _ = x.shape
        if B != cache.batch:
            raise ValueError(f"{B} rows of input for a cache of {cache.batch}")
        lengths = cache.lengths
        if n_valid is None:  # every token real
            valid = torch.full_like(lengths, T)
        else:
            valid = torch.as_tensor(n_valid, dtype=torch.long).to(lengths.device).view(B)
            if bool(((valid < 0) | (valid > T)).any()):
                raise ValueError(f"n_valid {valid.tolist()} outside 0..{T}")
        ends = lengths + valid
        longest, shortest = (int(lengths.max()), int(lengths.min())) if B else (0, 0)  # one read of the lengths a step
        if B and int(ends.max()) > self.max_len:
            raise ContextFull(f"a row would hold {int(ends.max())} positions, past the model's context of {self.max_len} "
                              f"(max_seq_len{f', {self.n_virtual} virtual' if self.n_virtual else ''})")
        positions = lengths[:, None] + torch.arange(T, device=lengths.device)  # (B, T)
        x, rope, tables = self._positions(x, positions)
        ctx = StepContext(positions=positions, lengths=lengths, n_valid=valid, rope=rope, rope_tables=tables, options=self.options,
                          longest=longest, uniform=B > 0 and longest == shortest)
        for layer, state in zip(self.layers, cache.states):
            ctx.window = layer.window
            block: Any = layer.block
            if layer.whole:
                x = layer.kind.forward(block, layer.aux, x, state, ctx)
                continue
            x = x + layer.kind.forward(layer.mixer, layer.aux, block.attn_norm(x), state, ctx)
            x = x + block.mlp(block.mlp_norm(x))
        cache.lengths = ends
        return x, valid
