"""The cache of a batch of sequences: one state per layer, each row's length, rows joining and leaving.

A layer's state is whatever its kind keeps (runtime/inference/layers.py registers the kinds): attention
kinds a `KVState` over a TokenBuffer (buffer.py), a recurrent layer (Mamba) its own object. Every state
answers the `LayerState` protocol, so the cache can select rows, join caches, roll back and count bytes
without knowing the kinds.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .buffer import TokenBuffer
from .paged import PagedBuffer


@runtime_checkable
class LayerState(Protocol):
    """What every layer's state does. A recurrent state that cannot roll back raises RollbackError."""

    def select(self, rows: torch.Tensor) -> LayerState:
        """A state of the given rows (an index tensor) only."""
        ...

    def concat_with(self, others: list[Any]) -> LayerState:
        """This state's rows, then the other states' (same kind of layer) rows."""
        ...

    def rollback(self, lengths: torch.Tensor) -> None:
        """Forget what follows each row's new length (lengths: (B,) after the rollback)."""
        ...

    def nbytes(self) -> int:
        """Bytes the state holds."""
        ...

    def bytes_per_token(self) -> int:
        """Bytes one more token of one row costs (0 for a fixed-size recurrent state)."""
        ...


class KVState:
    """An attention layer's state: per-token fields (k, v; or MLA's latent and rotary key) in a TokenBuffer
    (linear or rolling) or a PagedBuffer (blocks of a pool)."""

    def __init__(self, buffer: TokenBuffer | PagedBuffer) -> None:
        self.buffer = buffer

    def select(self, rows: torch.Tensor) -> KVState:
        return KVState(self.buffer.select(rows))

    def concat_with(self, others: list[Any]) -> KVState:
        if isinstance(self.buffer, PagedBuffer):
            return KVState(PagedBuffer.concat([self.buffer, *(o.buffer for o in others)]))
        return KVState(TokenBuffer.concat([self.buffer, *(o.buffer for o in others)]))

    def rollback(self, lengths: torch.Tensor) -> None:
        self.buffer.check_rollback(lengths)

    def nbytes(self) -> int:
        return self.buffer.nbytes()

    def bytes_per_token(self) -> int:
        return self.buffer.bytes_per_token()


class Cache:
    """A batch's per-layer states and each row's length (tokens in the cache, virtual ones included).

    `lengths` is a (B,) long tensor on the model's device. Rows are independent: `select(rows)` keeps
    some (rows leaving), `Cache.concat([a, b])` joins batches (rows joining; each row keeps its own
    length), `rollback(n)` forgets each row's last n tokens (or per-row counts)."""

    def __init__(self, states: list[LayerState], lengths: torch.Tensor) -> None:
        self.states = states
        self.lengths = lengths

    @property
    def batch(self) -> int:
        return int(self.lengths.numel())

    def select(self, rows: list[int] | torch.Tensor) -> Cache:
        """A cache of the given rows, in that order (the others leave)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        return Cache([state.select(index) for state in self.states], self.lengths.index_select(0, index))

    @staticmethod
    def concat(caches: list[Cache]) -> Cache:
        """One batch of every cache's rows, in order (caches of one Decoder)."""
        first = caches[0]
        states = [state.concat_with([c.states[i] for c in caches[1:]]) for i, state in enumerate(first.states)]
        return Cache(states, torch.cat([c.lengths for c in caches]))

    def rollback(self, n: int | list[int] | torch.Tensor) -> None:
        """Forget the last n tokens of every row (an int) or of each row (one count a row). Raises
        ValueError past a row's start, RollbackError past what a rolling window or recurrent state holds."""
        counts = torch.as_tensor(n, dtype=torch.long, device=self.lengths.device).expand(self.batch)
        if bool((counts < 0).any()) or bool((counts > self.lengths).any()):
            raise ValueError(f"cannot roll back {counts.tolist()} tokens from rows of {self.lengths.tolist()}")
        lengths = self.lengths - counts
        for state in self.states:
            state.rollback(lengths)
        self.lengths = lengths

    def nbytes(self) -> int:
        """Bytes every layer's state holds (allocated, every row)."""
        return sum(state.nbytes() for state in self.states)

    def bytes_per_token(self) -> int:
        """Bytes one token of one row costs over every layer (after the first write)."""
        return sum(state.bytes_per_token() for state in self.states)
