"""The cache pool: cache memory handed out in fixed-size blocks of tokens, as vLLM's block manager does.

A sequence holds ceil(tokens / block_size) blocks: its prompt's when it is admitted, one more each time
its length crosses a block boundary. The pool has a fixed number of blocks (its limit); the scheduler
admits a request only when its prompt's blocks (and one to grow into) are free, and when a running
sequence needs a block the pool no longer has, the most recently admitted sequence is preempted: its
blocks are freed and it waits again, to be recomputed from its prompt and the tokens it already produced
(vLLM's recompute preemption). A request that could never fit the whole pool is refused at submission.

The pool is the inference core's (runtime/inference/pool.py BlockPool): its blocks are the memory of the
full-attention layers' keys and values (paged.py PagedBuffer), so the blocks counted here are the cache.
"""

from __future__ import annotations

from ..inference.pool import BlockPool, PoolExhausted

__all__ = ["BlockPool", "PoolExhausted"]
