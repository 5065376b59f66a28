"""The cache pool: cache memory handed out in fixed-size blocks of tokens, as vLLM's block manager does.

A sequence holds ceil(tokens / block_size) blocks: its prompt's when it is admitted, one more each time
its length crosses a block boundary. The pool has a fixed number of blocks (its limit); the scheduler
admits a request only when its prompt's blocks (and one to grow into) are free, and when a running
sequence needs a block the pool no longer has, the most recently admitted sequence is preempted: its
blocks are freed and it waits again, to be recomputed from its prompt and the tokens it already produced
(vLLM's recompute preemption). A request that could never fit the whole pool is refused at submission.
Torch-free: the pool counts blocks; the cache tensors are the decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PoolExhausted(Exception):
    """No free block for a sequence that needs one (the scheduler preempts, never lets this escape)."""


@dataclass
class BlockPool:
    """`n_blocks` blocks of `block_size` tokens; `owned[seq]` the block ids a sequence holds."""

    n_blocks: int
    block_size: int = 16
    free: list[int] = field(default_factory=list)
    owned: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_blocks < 1 or self.block_size < 1:
            raise ValueError(f"a cache pool needs at least one block of one token ({self.n_blocks} blocks of {self.block_size})")
        self.free = list(range(self.n_blocks - 1, -1, -1))  # pop() hands out low ids first

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
            raise PoolExhausted(f"sequence {seq} needs {need} more blocks, {len(self.free)} free")
        held.extend(self.free.pop() for _ in range(max(need, 0)))

    def release(self, seq: int) -> int:
        """Frees every block of `seq`; returns how many."""
        blocks = self.owned.pop(seq, [])
        self.free.extend(reversed(blocks))
        return len(blocks)
