"""BlockPool: cache memory in fixed-size blocks of tokens from a pool with a limit, as vLLM's block manager.

The pool has `n_blocks` blocks of `block_size` tokens and one free list. A sequence (an int id the caller
chooses) holds a block table, `owned[seq]`: the ids of its blocks in order, token t of the sequence in
block owned[seq][t // block_size] at offset t % block_size. `grow(seq, tokens)` allocates what it lacks,
`release(seq)` returns its blocks to the free list.

The memory: `storage(key, like)` is one tensor (n_blocks, block_size, *feature) a layer and field (`key`),
allocated once, at the pool's size, at the first write of that field (in the dtype and on the device of
what is written). Every layer indexes its tensor by the same block ids, so a block is one token range of
a sequence in every paged layer: the accounting (used blocks) and the memory are the same thing. The
paged layout of a layer's buffer (paged.py PagedBuffer) reads and writes through it.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch


class PoolExhausted(RuntimeError):
    """No free block for a sequence that needs one (the server's scheduler preempts, never lets this escape)."""


class BlockPool:
    """`n_blocks` blocks of `block_size` tokens; `owned[seq]` the block ids a sequence holds, in order."""

    def __init__(self, n_blocks: int, block_size: int = 16) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"a cache pool needs at least one block of one token ({n_blocks} blocks of {block_size})")
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.free: list[int] = list(range(n_blocks - 1, -1, -1))  # pop() hands out low ids first
        self.owned: dict[int, list[int]] = {}
        self.tensors: dict[Hashable, torch.Tensor] = {}  # (layer, field) -> (n_blocks, block_size, *feature)
        self._grown: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # grow_all's last call: held since
        self._tables: dict[tuple[tuple[int, ...], int, torch.device], torch.Tensor] = {}  # table() of this allocation

    # ------------------------------------------------------------ accounting

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def used(self) -> int:
        return self.n_blocks - len(self.free)

    def can_hold(self, tokens: int, spare: int = 0) -> bool:
        """Whether a new sequence of `tokens` tokens fits now, leaving `spare` blocks free."""
        return self.blocks_for(tokens) + spare <= len(self.free)

    def grow(self, seq: int, tokens: int) -> None:
        """Makes sequence `seq` hold blocks for `tokens` tokens (allocating what it lacks); raises PoolExhausted
        and allocates nothing where the pool cannot."""
        held = self.owned.setdefault(seq, [])
        need = self.blocks_for(tokens) - len(held)
        if need > len(self.free):
            if not held:
                del self.owned[seq]
            raise PoolExhausted(f"sequence {seq} needs {need} more blocks of {self.block_size} tokens, {len(self.free)} free "
                                f"of {self.n_blocks}")
        if need > 0:
            held.extend(self.free.pop() for _ in range(need))
            self._tables.clear()

    def grow_all(self, seqs: list[int], tokens: list[int]) -> None:
        """grow(seq, n) for each pair, all or nothing: raises PoolExhausted, allocating nothing, where the pool
        cannot hold them all."""
        key = (tuple(seqs), tuple(tokens))
        if key == self._grown:  # the step's other layers: the first one allocated
            return
        need = sum(max(self.blocks_for(n) - len(self.owned.get(seq, [])), 0) for seq, n in zip(seqs, tokens))
        if need > len(self.free):
            raise PoolExhausted(f"{len(seqs)} sequences need {need} more blocks of {self.block_size} tokens, "
                                f"{len(self.free)} free of {self.n_blocks}")
        for seq, n in zip(seqs, tokens):
            self.grow(seq, n)
        self._grown = key

    def release(self, seq: int) -> int:
        """Frees every block of `seq`; returns how many."""
        blocks = self.owned.pop(seq, [])
        self.free.extend(reversed(blocks))
        self._tables.clear()
        self._grown = None
        return len(blocks)

    def table(self, seqs: list[int], n_blocks: int, device: torch.device) -> torch.Tensor:
        """(len(seqs), n_blocks) long tensor: each sequence's first n_blocks block ids (0 past its table, where
        a reader masks by position). Built once per allocation and shared by every layer of a step."""
        key = (tuple(seqs), n_blocks, device)
        table = self._tables.get(key)
        if table is None:
            rows = []
            for seq in seqs:
                held = self.owned.get(seq, [])[:n_blocks]
                rows.append(held + [0] * (n_blocks - len(held)))
            table = torch.tensor(rows, dtype=torch.long, device=device).view(len(seqs), n_blocks)
            if len(self._tables) > 64:  # many batches between allocations: keep the memo small
                self._tables.clear()
            self._tables[key] = table
        return table

    # ------------------------------------------------------------ memory

    def storage(self, key: Hashable, like: torch.Tensor) -> torch.Tensor:
        """The pool tensor of a layer's field `key`, (n_blocks, block_size, *feature) for `like` (B, T, *feature)
        tensors; allocated at the first call, the same tensor after."""
        tensor = self.tensors.get(key)
        if tensor is None:
            tensor = like.new_zeros((self.n_blocks, self.block_size, *like.shape[2:]))
            self.tensors[key] = tensor
        return tensor

    def nbytes(self) -> int:
        """Bytes the pool's tensors hold (every block, every paged layer and field)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def bytes_per_token(self) -> int:
        """Bytes one token takes over every paged layer and field (0 before the first write)."""
        return sum(t[0, 0].numel() * t.element_size() for t in self.tensors.values())
