"""The curriculum sampler: which token window each training sequence is, as a pure function of
(seed, data fingerprint, tokens consumed).

Each source's training token stream is cut into blocks of `block` tokens (the least common
multiple of the stages' sequence lengths, so every stage's windows tile a block exactly); each
epoch visits the blocks in a seeded permutation, reading a block front to back. A source's
cursor (tokens taken from it) therefore fixes its next window whatever the stage. For each
sequence, the stage's mixture picks the source from a hash of (seed, fingerprint, position).
Windows are read as seq_len + 1 contiguous tokens (inputs, and targets shifted by one); the
stream is circular, so every token of an epoch is read once and at most block - 1 twice. A
cursor left mid-block by a seq_len change makes one window that spans two blocks.

A source of conversations carries a loss mask: a target the mask leaves out (a prompt's token, the
template's, the end-of-document token) is -100, which the model's loss ignores. Documents in a
row are numbered from the shard's document ends (not by looking for the end-of-document token,
which a chat template may also write inside a conversation).

A streamed source (`cache: false`, stream_loader.py) has no stream positions to permute: its
cursor only counts the tokens it gave (the same on every rank, as the picks are), and a rank reads
its own rows of it (`next_batch`'s `rows`) from its own stream loader; the other rows stay zero.

A resumed run whose curriculum tiles other blocks (a stage added, dropped or given another
seq_len) keeps each source's current epoch in the order it started, then continues in the new
tiling: a source's history is a list of segments (first cursor, first epoch, block), saved with
the state, so resuming again replays the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ...schemas.data import OnlineMixture
from ...compiler.vision import ImageInput
from .errors import DataError
from .image_batches import ImageRows
from .mixing import OnlineWeights, static_weights
from .pipeline import PreparedData
from .stream_loader import StreamedSources

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
STATE_VERSION = 1


@dataclass
class Batch:
    """`input_ids` and `targets` int64 (n, seq_len), targets -100 where the loss mask leaves a
    token out; `document_ids` int64 (n, seq_len) numbering the documents inside each row (an
    end-of-document token belongs to the document it ends), or None without document masking."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    document_ids: torch.Tensor | None
    sources: list[str] | None = None  # the source each row was drawn from (training batches)
    images: ImageInput | None = None  # model.vision: the rows' images and where their patches go (data/images.py)


class Sampler:
    """Training batches over `prepared`'s training shards following `stages` (StagePlans:
    start_tokens, end_tokens, seq_len, mix), seeded by `seed`, weighted by `mixture` (data.mixture:
    None keeps each stage's mix; temperature and unimax set weights from the sources' sizes; online
    moves them with the losses given to `observe`)."""

    def __init__(self, prepared: PreparedData, stages: Sequence[Any], seed: int, mixture: Any = None, *,
                 rank: int = 0, world_size: int = 1):
        if not stages:
            raise ValueError("a sampler needs at least one stage")
        self.prepared, self.stages, self.seed = prepared, list(stages), seed
        self.sources = prepared.sources
        self.lengths = {name: prepared.train[name].n_tokens for name in prepared.train}
        # this rank's readers of the streamed sources (cache: false); close() ends their workers
        self.streams = StreamedSources(prepared.streams, rank, world_size) if prepared.streams is not None else None
        for stage in self.stages:
            for name in stage.mix:
                if self.streams is not None and name in self.streams.loaders:
                    continue
                if name not in self.lengths:
                    raise DataError(f"stage {stage.index} mixes source {name!r}, which was not prepared", path=("data", "curriculum", stage.index, "mix"))
                if self.lengths[name] < 2:
                    raise DataError(f"source {name!r} has fewer than 2 training tokens", source=name)
        self.block = _block_size([stage.seq_len for stage in self.stages])
        self.key = _mix(np.uint64(int(prepared.fingerprint[:16], 16)) ^ _mix(np.uint64(seed)))
        self.tokens = 0
        self.cursors = {name: 0 for name in self.sources}
        # Each source's (first cursor, first epoch, block) segments; the last one is open-ended.
        self.segments = {name: [(0, 0, self.block)] for name in self.sources}
        self._permutations: dict[str, tuple[int, int, np.ndarray]] = {}
        self.mixture = mixture
        self.base = {stage.index: static_weights(stage.mix, self.lengths, stage.end_tokens - stage.start_tokens, mixture)
                     for stage in self.stages}
        self.online = OnlineWeights(mixture, self.sources) if isinstance(mixture, OnlineMixture) else None

    # ------------------------------------------------------------ the public contract

    def stage_at(self, tokens: int | None = None) -> Any:
        """The stage in force after `tokens` training tokens (default: now); the last one lasts."""
        tokens = self.tokens if tokens is None else tokens
        return next((stage for stage in self.stages if tokens < stage.end_tokens), self.stages[-1])

    def next_batch(self, n_sequences: int, seq_len: int, rows: range | None = None) -> Batch:
        """The next `n_sequences` windows of `seq_len` tokens; advances by n_sequences * seq_len. `rows`:
        this rank's rows of the global batch (default all): a streamed source's rows outside it are
        left zero (other ranks read them)."""
        mix = self.weights()
        names = list(mix)
        weights = np.cumsum([mix[name] for name in names], dtype=np.float64)
        positions = self.tokens + seq_len * np.arange(n_sequences, dtype=np.uint64)
        picks = np.searchsorted(weights / weights[-1], self._uniform(positions), side="right")
        mine = range(n_sequences) if rows is None else rows
        batch = _Rows(n_sequences, seq_len, self.prepared)
        batch.sources = []
        for row, pick in enumerate(picks.tolist()):
            name = names[min(pick, len(names) - 1)]
            batch.sources.append(name)
            cursor = self.cursors[name]
            if name not in self.lengths:  # streamed: this rank reads its own rows
                if row in mine:
                    assert self.streams is not None  # a source without a shard is a streamed one
                    batch.put(row, self.streams.window(name, seq_len))
                self.cursors[name] = cursor + seq_len
                continue
            start, left = self._locate(name, cursor)
            if seq_len <= left and start + seq_len < self.lengths[name]:  # the usual case: one slice
                batch.read(row, self.prepared.train[name], slice(start, start + seq_len + 1))
            else:
                batch.read(row, self.prepared.train[name], self._window(name, cursor, seq_len))
            self.cursors[name] = cursor + seq_len
        self.tokens += n_sequences * seq_len
        return batch.batch()

    def close(self) -> None:
        """End the stream loaders' worker processes (none without streamed sources)."""
        if self.streams is not None:
            self.streams.close()

    def weights(self, tokens: int | None = None) -> dict[str, float]:
        """The sampling weights in force (normalised, by source name) after `tokens` (default: now)."""
        base = self.base[self.stage_at(tokens).index]
        return self.online.weights(base) if self.online is not None else base

    def wants_losses(self) -> bool:
        """True where the online mixture updates at this point: give `observe` each source's loss."""
        return self.online is not None and self.online.due(self.tokens)

    def observe(self, losses: dict[str, float]) -> None:
        """The online mixture's update from the recent training loss of each source (by name); the
        same losses on every rank keep the ranks' weights identical. No-op without an online mixture."""
        if self.online is not None:
            self.online.update(self.tokens, losses)

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs of each source's training tokens consumed so far (above 1.0: data repeats)."""
        return {name: self.cursors[name] / self.lengths[name] for name in self.lengths}  # a stream's size is unknown

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: restores the sampler exactly with load_state_dict."""
        return {
            "version": STATE_VERSION, "seed": self.seed, "fingerprint": self.prepared.fingerprint,
            "block": self.block, "tokens": self.tokens, "cursors": dict(self.cursors),
            "segments": {name: [list(segment) for segment in segments] for name, segments in self.segments.items()},
            **({"mixture": self.online.state_dict()} if self.online is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Continue exactly where `state` (from state_dict) stopped. Raises DataError when it was
        saved for other data or another seed. Where the stages now tile other blocks, returns a
        note saying how the order changes (None when it does not)."""
        if not isinstance(state, dict):
            raise DataError(f"the sampler state is not a mapping but {type(state).__name__}")
        mine = {"fingerprint": self.prepared.fingerprint, "seed": self.seed}
        differ = [f"{key} {state.get(key)} (now {value})" for key, value in mine.items() if state.get(key) != value]
        if differ:
            raise DataError(f"the sampler state is for other data: {', '.join(differ)}")
        try:
            tokens, block = int(state["tokens"]), int(state["block"])
            cursors = {name: int(state["cursors"].get(name, 0)) for name in self.sources}
            saved = state.get("segments", {})
            segments = {
                name: [tuple(int(x) for x in segment) for segment in saved.get(name, [(0, 0, block)])] for name in self.sources
            }
            if block < 1 or any(not s or s[0][:2] != (0, 0) or any(len(x) != 3 or x[2] < 1 for x in s) for s in segments.values()):
                raise ValueError("segments must start at cursor 0, epoch 0, with positive blocks")
            online = None
            if self.online is not None:
                online = OnlineWeights(self.online.mixture, self.sources)
                if "mixture" in state:  # absent: saved before the online mixture was set; it starts afresh
                    online.load_state_dict(state["mixture"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # a damaged or hand-edited state.json
            raise DataError(f"the sampler state is damaged ({type(error).__name__}: {error}): tokens and cursors are needed") from None
        note = None
        if block != self.block:
            for name in self.sources:
                start = self._epoch_end(name, cursors[name], segments[name])
                segments[name] = [s for s in segments[name] if s[0] < start[0]] + [start + (self.block,)]
            note = (f"the curriculum's sequence lengths now tile blocks of {self.block} tokens (were {block}): each source "
                    "finishes its current epoch in the order it started, then continues in a new order")
        self.tokens, self.cursors, self.segments = tokens, cursors, segments
        if online is not None:
            self.online = online
        self._permutations.clear()
        return note

    # ------------------------------------------------------------ windows

    def _uniform(self, positions: np.ndarray) -> np.ndarray:
        """Uniform [0, 1) numbers, one per position, from a counter-based hash (splitmix64)."""
        bits = _mix(positions.astype(np.uint64) ^ self.key)
        return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    def _segment(self, name: str, cursor: int) -> tuple[int, int, int]:
        """The (first cursor, first epoch, block) segment a source's cursor lies in."""
        segments = self.segments[name]
        return next((segment for segment in reversed(segments) if segment[0] <= cursor), segments[0])

    def _locate(self, name: str, cursor: int) -> tuple[int, int]:
        """Where a source's cursor reads: (token index in the stream, tokens left in its block)."""
        first_cursor, first_epoch, block = self._segment(name, cursor)
        blocks = -(-self.lengths[name] // block)
        epoch, offset = divmod(cursor - first_cursor, blocks * block)
        index, within = divmod(offset, block)
        start = int(self._permutation(name, first_epoch + epoch, blocks)[index]) * block + within
        return start, block - within

    def _epoch_end(self, name: str, cursor: int, segments: list[tuple[int, int, int]]) -> tuple[int, int]:
        """(cursor, epoch) where the epoch that `cursor` is in ends (`cursor` itself at a boundary)."""
        first_cursor, first_epoch, block = next(s for s in reversed(segments) if s[0] <= cursor)
        epoch_tokens = -(-self.lengths[name] // block) * block
        epochs = -(-(cursor - first_cursor) // epoch_tokens)  # whole epochs up to the boundary at or after cursor
        return first_cursor + epochs * epoch_tokens, first_epoch + epochs

    def _window(self, name: str, cursor: int, seq_len: int) -> np.ndarray:
        """Stream positions of seq_len tokens from the cursor on, in epoch order, and of the token
        that follows the last."""
        length = self.lengths[name]
        parts, remaining = [], seq_len
        while True:
            start, left = self._locate(name, cursor)
            start %= length
            take = min(remaining, left)
            if take == remaining and not parts:  # the usual case: the window lies inside one block
                return _circular(length, start, seq_len + 1)
            parts.append(_circular(length, start, take))
            remaining -= take
            cursor += take
            if not remaining:
                # A window split over two blocks (a cursor mid-block after a seq_len change):
                # its last target is still the true next token.
                parts.append(_circular(length, (start + take) % length, 1))
                return np.concatenate(parts)

    def _permutation(self, name: str, epoch: int, blocks: int) -> np.ndarray:
        cached = self._permutations.get(name)
        if cached is None or cached[:2] != (epoch, blocks):
            index = self.sources.index(name)
            seed = [self.seed, int(self.prepared.fingerprint[:8], 16), index, epoch]
            cached = (epoch, blocks, np.random.default_rng(seed).permutation(blocks).astype(np.int64))
            self._permutations[name] = cached
        return cached[2]


def planned_epochs(prepared: PreparedData, stages: Sequence[Any], mixture: Any = None) -> dict[str, float]:
    """Epochs of each source's training tokens the stages will consume (above 1.0: data repeats);
    an online mixture counts as its starting weights."""
    wanted = {name: 0.0 for name in prepared.train}
    sizes = {name: shard.n_tokens for name, shard in prepared.train.items()}
    for stage in stages:
        span = stage.end_tokens - stage.start_tokens
        for name, weight in static_weights(stage.mix, sizes, span, mixture).items():
            if name in wanted:  # a streamed source's size is unknown
                wanted[name] += span * weight
    return {name: tokens / max(prepared.train[name].n_tokens, 1) for name, tokens in wanted.items()}


def validation_batches(prepared: PreparedData, tokens: int, seq_len: int, batch_size: int) -> list[Batch]:
    """Deterministic evaluation batches: about `tokens` tokens in windows of `seq_len`, taken in
    order from the front of each source's validation stream, sources in turn. Empty where no
    source holds validation data (validation.fraction: 0)."""
    names = [name for name, shard in prepared.val.items() if shard.n_tokens >= 2]
    if not names:
        return []
    n_sequences = max(1, tokens // seq_len)
    batches = []
    for first in range(0, n_sequences, batch_size):
        rows = _Rows(min(batch_size, n_sequences - first), seq_len, prepared)
        for row in range(rows.n):
            index = first + row
            name = names[index % len(names)]
            shard = prepared.val[name]
            rows.read(row, shard, _circular(shard.n_tokens, (index // len(names)) * seq_len % shard.n_tokens, seq_len + 1))
        batches.append(rows.batch())
    return batches


class _Rows:
    """A batch being read: each row's seq_len + 1 tokens, whether each is a trained target, and
    (with document masking) which document of its shard each is in."""

    def __init__(self, n: int, seq_len: int, prepared: PreparedData):
        self.n, self.masking = n, prepared.document_masking
        self.tokens = np.zeros((n, seq_len + 1), dtype=np.int64)  # zeros: the rows another rank reads
        self.trained: np.ndarray | None = None  # made where a row comes from a shard with a loss mask
        self.documents = np.zeros((n, seq_len + 1), dtype=np.int64) if self.masking else None
        self.eos_id = prepared.eos_id
        self.sources: list[str] | None = None
        self.images = ImageRows(n, seq_len, prepared.image_id, prepared.n_patches) if prepared.image_id is not None else None

    def read(self, row: int, shard: Any, where: slice | np.ndarray) -> None:
        """Fill `row` from `shard` at stream positions `where` (a slice, or an array of positions)."""
        self.tokens[row] = shard.tokens[where]
        mask = shard.loss_mask
        if mask is not None:
            if self.trained is None:
                self.trained = np.ones(self.tokens.shape, dtype=bool)
            self.trained[row] = mask[where] != 0
        if self.documents is not None:
            positions = np.arange(where.start, where.stop) if isinstance(where, slice) else where
            self.documents[row] = np.searchsorted(shard.document_ends, positions, side="right")
        if self.images is not None:
            self.images.read(row, shard, where, self.tokens[row])

    def put(self, row: int, window: np.ndarray) -> None:
        """Fill `row` with a streamed window (seq_len + 1 tokens): documents end at the end-of-document token."""
        self.tokens[row] = window
        if self.documents is not None:
            ends = window == self.eos_id
            self.documents[row] = np.cumsum(ends) - ends  # an end-of-document token belongs to the document it ends

    def batch(self) -> Batch:
        inputs, targets = self.tokens[:, :-1], self.tokens[:, 1:]
        if self.trained is not None:
            targets = np.where(self.trained[:, 1:], targets, -100)
        if self.images is not None:  # image tokens are inputs only
            targets = self.images.targets(self.tokens, targets)
        document_ids = None
        if self.documents is not None:
            # Documents renumbered from 0 within each row: a new one wherever the shard's document
            # changes (at a document end, a block seam or the stream's wrap).
            changes = np.diff(self.documents[:, :-1], axis=1) != 0
            document_ids = torch.from_numpy(np.concatenate([np.zeros((self.n, 1), np.int64), np.cumsum(changes, axis=1)], axis=1))
        return Batch(torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(np.ascontiguousarray(targets)), document_ids,
                     self.sources, self.images.input() if self.images is not None else None)


def _circular(length: int, start: int, count: int) -> np.ndarray:
    """Positions of `count` tokens from `start` in a stream of `length`, wrapping to its front."""
    return (start + np.arange(count, dtype=np.int64)) % length


def _block_size(seq_lens: list[int]) -> int:
    block = math.lcm(*seq_lens)
    # Sequence lengths without a small common multiple: blocks of the longest; windows of the
    # other lengths then may run from one block into the next (still contiguous tokens).
    return block if block <= 64 * max(seq_lens) else max(seq_lens)


def _mix(x):
    """splitmix64's finaliser over uint64 scalars or arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64)
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))
