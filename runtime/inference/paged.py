"""PagedBuffer: a full-attention layer's per-token tensors in blocks of a shared pool (pool.py), as vLLM's
paged attention keeps them.

The third layout of a layer's buffer, beside TokenBuffer's linear and rolling ones (buffer.py), with the
same reading and writing interface. Each row is a sequence of the pool (`seqs[b]`, an id the caller
chooses); its block table is the pool's `owned[seq]`; every field of the layer lives in one pool tensor
(n_blocks, block_size, *feature) allocated once at the pool's size:

    write        puts each row's valid new tokens into its blocks (growing its table from the pool's free
                 list where it crosses a block boundary; PoolExhausted where the pool is out of blocks)
    attend_view  gathers each row's blocks into the (B, S, *feature) keys attention takes (positions
                 0..S-1; past a row's own tokens, what a block holds is masked by position)
    select       keeps some rows, concat joins buffers of one pool: block tables change hands, no key is
                 copied. A row leaving keeps its blocks until the pool's owner releases its sequence
                 (BlockPool.release): the pool, not the buffer, knows when a sequence is done.

The Decoder pages full-attention layers (mha, gqa, mqa, and MLA's latent fields) when a cache is made with
a pool (Decoder.new_cache(..., pool=, seqs=)); sliding-window layers keep their rolling buffer (bounded by
the window) and recurrent layers their per-row state.
"""

from __future__ import annotations

import torch

from .buffer import Fields
from .pool import BlockPool


class PagedBuffer:
    """Layer `layer`'s fields for the rows `seqs` (sequence ids of `pool`), in the pool's blocks."""

    rolling = False
    window = None

    def __init__(self, pool: BlockPool, layer: int, seqs: list[int]) -> None:
        self.pool = pool
        self.layer = layer
        self.seqs = list(seqs)
        self.names: list[str] = []  # the fields written so far

    @property
    def batch(self) -> int:
        return len(self.seqs)

    def _table(self, n_blocks: int, device: torch.device) -> torch.Tensor:
        """(B, n_blocks) block ids of each row's first n_blocks blocks (0 past a row's table: masked keys)."""
        return self.pool.table(self.seqs, n_blocks, device)

    # ------------------------------------------------------------ reading

    def attend_view(self, new: Fields, lengths: torch.Tensor, *, longest: int | None = None) -> tuple[Fields, torch.Tensor]:
        """The keys of positions 0..max(lengths) + T - 1 of every row {name: (B, S, *feature)} and their positions
        (B, S); call after `write` (the blocks hold the new tokens)."""
        T = next(iter(new.values())).size(1)
        end = (int(lengths.max()) if len(lengths) else 0) if longest is None else longest
        end += T
        table = self._table(self.pool.blocks_for(end), lengths.device)  # (B, nb)
        B, nb = table.shape
        keys = {}
        for name in new:
            storage = self.pool.storage((self.layer, name), new[name])  # (N, bs, *feature)
            gathered = storage.index_select(0, table.reshape(-1))  # (B * nb, bs, *feature)
            keys[name] = gathered.view(B, nb * self.pool.block_size, *storage.shape[2:])[:, :end]
        positions = torch.arange(end, device=lengths.device).expand(B, end)
        return keys, positions

    # ------------------------------------------------------------ writing

    def write(self, new: Fields, lengths: torch.Tensor, n_valid: torch.Tensor, *, longest: int | None = None,
              uniform: bool | None = None) -> None:
        """Stores each row's first n_valid[b] new tokens at positions lengths[b] + t, in its blocks (padding is
        never stored). Raises PoolExhausted, storing nothing, where the pool lacks a block a row needs."""
        T = next(iter(new.values())).size(1)
        ends = [int(end) for end in (lengths + n_valid).tolist()]
        self.pool.grow_all(self.seqs, ends)  # the first layer of a step allocates, the others find the blocks there
        bs = self.pool.block_size
        table = self._table(self.pool.blocks_for(max(ends, default=0)), lengths.device)
        t = torch.arange(T, device=lengths.device)[None, :]
        rows, steps = (t < n_valid[:, None]).nonzero(as_tuple=True)
        positions = lengths[rows] + steps
        blocks, offsets = table[rows, positions // bs], positions % bs
        for name, tensor in new.items():
            storage = self.pool.storage((self.layer, name), tensor)
            storage[blocks, offsets] = tensor[rows, steps].to(storage.dtype)
            if name not in self.names:
                self.names.append(name)

    # ------------------------------------------------------------ rows

    def check_rollback(self, lengths: torch.Tensor) -> None:
        """Every position stays in its block: any rollback is possible (the blocks past it are reused)."""

    def select(self, rows: torch.Tensor) -> PagedBuffer:
        """The given rows (index tensor): their block tables, no copy of the keys."""
        out = PagedBuffer(self.pool, self.layer, [self.seqs[i] for i in rows.tolist()])
        out.names = list(self.names)
        return out

    @staticmethod
    def concat(buffers: list[PagedBuffer]) -> PagedBuffer:
        """The rows of several buffers of one pool and layer after one another (no copy)."""
        first = buffers[0]
        if any(b.pool is not first.pool or b.layer != first.layer for b in buffers):
            raise ValueError("paged buffers of different pools or layers cannot join")
        out = PagedBuffer(first.pool, first.layer, [seq for b in buffers for seq in b.seqs])
        out.names = list(dict.fromkeys(name for b in buffers for name in b.names))
        return out

    def nbytes(self) -> int:
        """Bytes of this layer's fields in the blocks its rows hold."""
        blocks = sum(len(self.pool.owned.get(seq, [])) for seq in self.seqs)
        return blocks * self.pool.block_size * self.bytes_per_token()

    def bytes_per_token(self) -> int:
        """Bytes one token of one row takes in this layer (0 before the first write)."""
        tensors = [self.pool.tensors[(self.layer, name)] for name in self.names]
        return sum(t[0, 0].numel() * t.element_size() for t in tensors)
