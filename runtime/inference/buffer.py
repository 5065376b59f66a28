"""TokenBuffer: what an attention layer keeps per token and row, in a growing buffer or a rolling one.

An attention kind stores a few named tensors per token (MHA/GQA/MQA: `k`, `v` of (n_kv, hs); MLA: its
kv latent and shared rotary key) for each row of a batch. Every row has its own length (prompts of
different lengths, rows that joined later). The buffer is one of two layouts:

    linear   slot = position; grows by doubling; every position below a row's length is there
    rolling  slot = position % capacity, capacity = window + slack; holds the last `capacity`
             positions of each row, so memory is bounded by the window, not the sequence. `slack`
             extra slots let a caller roll back up to `slack` tokens (speculative decoding)

`attend_view(new, lengths)` gives the keys a step's T new tokens attend to, with each key's absolute
position (-1: nothing there), and `write(new, lengths, n_valid)` stores the valid new tokens. Tensors
are allocated at the first write, in the dtype and on the device of what is written.
"""

from __future__ import annotations

import torch

Fields = dict[str, torch.Tensor]  # name -> (B, T, *feature) tensors


class RollbackError(ValueError):
    """A rollback past what a rolling buffer still holds (more than its slack)."""


class TokenBuffer:
    """Per-token tensors of `batch` rows. `window` None: linear; else rolling with `window + slack` slots."""

    def __init__(self, batch: int, *, window: int | None = None, slack: int = 0, capacity: int = 0) -> None:
        self.batch = batch
        self.window = window
        self.rolling = window is not None
        self.capacity = (window + slack) if window is not None else capacity
        self.fields: Fields = {}  # name -> (B, capacity, *feature)
        self.positions: torch.Tensor | None = None  # rolling: (B, capacity) position held by each slot, -1 none

    # ------------------------------------------------------------ reading

    def attend_view(self, new: Fields, lengths: torch.Tensor, *, longest: int | None = None) -> tuple[Fields, torch.Tensor]:
        """The keys T new tokens of each row attend to: {name: (B, S, *feature)} and their absolute
        positions (B, S) (-1: no key). The new tokens (at positions lengths[b] + t) are included.
        Linear: call after `write` (the buffer holds them); rolling: before (they are appended). `longest`:
        max(lengths) when the caller knows it (saves reading it again)."""
        T = next(iter(new.values())).size(1)
        device = lengths.device
        if not self.rolling:
            end = (_longest(lengths) if longest is None else longest) + T
            keys = {name: tensor[:, :end] for name, tensor in self.fields.items()}
            positions = torch.arange(end, device=device).expand(self.batch, end)
            return keys, positions
        new_positions = lengths[:, None] + torch.arange(T, device=device)  # (B, T)
        if self.positions is None:
            return new, new_positions
        held = torch.where(self.positions < lengths[:, None], self.positions, -1)  # rolled-back slots: nothing
        keys = {name: torch.cat([self.fields[name], tensor.to(self.fields[name].dtype)], dim=1) for name, tensor in new.items()}
        return keys, torch.cat([held, new_positions], dim=1)

    # ------------------------------------------------------------ writing

    def _allocate(self, new: Fields, capacity: int) -> None:
        for name, tensor in new.items():
            B, _, *feature = tensor.shape
            fresh = tensor.new_zeros((B, capacity, *feature))
            if name in self.fields:
                old = self.fields[name]
                fresh[:, : old.size(1)] = old
            self.fields[name] = fresh
        self.capacity = capacity

    def write(self, new: Fields, lengths: torch.Tensor, n_valid: torch.Tensor, *, longest: int | None = None,
              uniform: bool | None = None) -> None:
        """Stores each row's first n_valid[b] new tokens at positions lengths[b] + t. `longest` (max(lengths))
        and `uniform` (every row has that length): what the caller already read, to save reading it again."""
        T = next(iter(new.values())).size(1)
        if not self.rolling:
            start = _longest(lengths) if longest is None else longest
            end = start + T
            if not self.fields or end > self.capacity:
                self._allocate(new, max(end, 2 * self.capacity, 16))
            if uniform is None:
                uniform = len(lengths) > 0 and bool((lengths == lengths[0]).all())
            if uniform:  # the common case: one slice for every row
                for name, tensor in new.items():
                    self.fields[name][:, start : start + T] = tensor
                return
            slots = lengths[:, None] + torch.arange(T, device=lengths.device)  # (B, T); padding lands past the row's end
            rows = torch.arange(self.batch, device=lengths.device)[:, None].expand(-1, T)
            for name, tensor in new.items():
                self.fields[name][rows, slots] = tensor
            return
        if not self.fields:
            self._allocate(new, self.capacity)
            self.positions = torch.full((self.batch, self.capacity), -1, dtype=torch.long, device=lengths.device)
        assert self.positions is not None
        t = torch.arange(T, device=lengths.device)[None, :]
        # each row's valid tokens, the last `capacity` of them only (no slot written twice)
        keep = (t < n_valid[:, None]) & (t >= n_valid[:, None] - self.capacity)  # (B, T)
        rows, steps = keep.nonzero(as_tuple=True)
        positions = lengths[rows] + steps
        slots = positions % self.capacity
        for name, tensor in new.items():
            self.fields[name][rows, slots] = tensor[rows, steps].to(self.fields[name].dtype)
        self.positions[rows, slots] = positions

    # ------------------------------------------------------------ rows and rollback

    def check_rollback(self, lengths: torch.Tensor) -> None:
        """Raises RollbackError where a rolling buffer no longer holds the window before `lengths`
        (the tokens a rollback returns to were overwritten: more than `slack` rolled back)."""
        if not self.rolling or self.positions is None:
            return
        assert self.window is not None
        span = torch.arange(1, self.window, device=lengths.device)[None, :]  # the window - 1 positions before
        wanted = lengths[:, None] - span  # (B, window - 1)
        slots = wanted.clamp(min=0) % self.capacity
        held = self.positions.gather(1, slots)
        if bool(((wanted >= 0) & (held != wanted)).any()):
            raise RollbackError(f"a rolling buffer of {self.capacity} slots (window {self.window}) cannot roll back that far: "
                                f"at most {self.capacity - self.window} tokens (its slack)")

    def select(self, rows: torch.Tensor) -> TokenBuffer:
        """A buffer of the given rows (index tensor), sharing nothing with this one."""
        out = TokenBuffer(len(rows), window=self.window, slack=0, capacity=self.capacity)
        out.capacity = self.capacity
        out.fields = {name: tensor.index_select(0, rows) for name, tensor in self.fields.items()}
        out.positions = None if self.positions is None else self.positions.index_select(0, rows)
        return out

    @staticmethod
    def concat(buffers: list[TokenBuffer]) -> TokenBuffer:
        """The rows of several buffers of one layout (and window) after one another."""
        first = buffers[0]
        out = TokenBuffer(sum(b.batch for b in buffers), window=first.window)
        filled = [b for b in buffers if b.fields]
        capacity = max(b.capacity for b in buffers)
        out.capacity = capacity
        if filled:
            template = filled[0]
            for name, tensor in template.fields.items():
                parts = []
                for b in buffers:
                    part = tensor.new_zeros((b.batch, capacity, *tensor.shape[2:]))
                    if b.fields:
                        part[:, : b.capacity] = b.fields[name]
                    parts.append(part)
                out.fields[name] = torch.cat(parts)
            if first.rolling:
                device = template.fields[next(iter(template.fields))].device
                out.positions = torch.cat([b.positions if b.positions is not None
                                           else torch.full((b.batch, capacity), -1, dtype=torch.long, device=device) for b in buffers])
        return out

    def nbytes(self) -> int:
        """Bytes held by the tensors (allocated capacity, every row)."""
        return sum(t.numel() * t.element_size() for t in self.fields.values())

    def bytes_per_token(self) -> int:
        """Bytes one token of one row takes (0 before the first write)."""
        return sum(t[0, 0].numel() * t.element_size() for t in self.fields.values())


def _longest(lengths: torch.Tensor) -> int:
    """max(lengths), 0 for no rows."""
    return int(lengths.max()) if len(lengths) else 0
