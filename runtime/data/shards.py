"""Files of a cache entry: the spool of filtered documents, and the token shards.

A spool holds a split's kept documents as UTF-8 bytes one after another, with their end
offsets: the tokenizer is trained on a sample of it and the workers tokenize ranges of it.
A token shard is the split's token stream (each document followed by the end-of-document
token: packed, nothing padded) as raw uint16 or uint32, with the documents' end offsets as
uint64; it is read through a memory map, page by page, never whole. A source of conversations
(chat or instruction records) also has a loss mask: one uint8 a token, 1 where the token is
trained on as a target (the assistant's), 0 where it is masked out of the loss.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 where every id fits, uint32 otherwise."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class SpoolWriter:
    """Appends documents of one split of one source to `<path>` (bytes) and keeps their ends."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("wb")
        self.ends = array("Q")
        self.size = 0
        self.characters = 0

    def add(self, text: str, characters: int | None = None) -> None:
        """Append a document; `characters` counts it where `text` is an encoding of it (a rendered
        conversation as JSON), else its length."""
        data = text.encode("utf-8", "replace")  # a lone surrogate (legal in JSON) becomes "?"
        self.handle.write(data)
        self.size += len(data)
        self.characters += len(text) if characters is None else characters
        self.ends.append(self.size)

    def close(self) -> "Spool":
        self.handle.close()
        return Spool(self.path, np.frombuffer(self.ends, dtype=np.uint64) if self.ends else np.zeros(0, np.uint64), self.characters)


@dataclass
class Spool:
    path: Path
    ends: np.ndarray  # (documents,) uint64 byte offsets where each document ends
    characters: int

    @property
    def documents(self) -> int:
        return len(self.ends)

    @property
    def size(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def chunks(self, target_bytes: int) -> Iterator[tuple[str, int, np.ndarray]]:
        """(path, start byte, document ends relative to start) of ~target_bytes each."""
        first = 0
        start = 0
        while first < len(self.ends):
            stop = int(np.searchsorted(self.ends, start + target_bytes, side="right"))
            stop = max(stop, first + 1)
            yield str(self.path), start, (self.ends[first:stop] - start).astype(np.uint64)
            start = int(self.ends[stop - 1])
            first = stop

    def texts(self, select: np.ndarray | None = None) -> Iterator[str]:
        """The documents (those where `select` is true, if given), read one at a time."""
        with self.path.open("rb") as handle:
            start = 0
            for index, end in enumerate(self.ends.tolist()):
                if select is None or select[index]:
                    handle.seek(start)
                    yield handle.read(end - start).decode("utf-8")
                start = end


def shard_file(stem: Path, suffix: str) -> Path:
    """`<stem>.<suffix>`: appended, never replacing a suffix (source names may hold dots: web.en)."""
    return stem.with_name(f"{stem.name}.{suffix}")


class ShardWriter:
    """Appends token chunks to `<stem>.tokens`, document ends to `<stem>.docs` and, with
    `masked`, each token's loss mask to `<stem>.mask`."""

    def __init__(self, stem: Path, masked: bool = False):
        self.tokens = shard_file(stem, "tokens").open("wb")
        self.docs = shard_file(stem, "docs").open("wb")
        self.mask = shard_file(stem, "mask").open("wb") if masked else None
        self.n_tokens = 0
        self.n_documents = 0
        self.n_trained = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        if (mask is None) != (self.mask is None):
            raise ValueError("a masked shard takes a loss mask with every chunk, an unmasked one none")
        self.tokens.write(tokens.tobytes())
        ends = self.n_tokens + np.cumsum(lengths, dtype=np.uint64)
        self.docs.write(ends.astype(np.uint64).tobytes())
        if self.mask is not None:
            self.mask.write(mask.astype(np.uint8).tobytes())
            self.n_trained += int(np.count_nonzero(mask))
        else:
            self.n_trained += int(tokens.size)
        self.n_tokens += int(tokens.size)
        self.n_documents += int(lengths.size)

    def counts(self) -> dict[str, int]:
        """What meta.json records of the shard: tokens, documents and, for a masked shard, trained tokens."""
        counts = {"tokens": self.n_tokens, "documents": self.n_documents}
        if self.mask is not None:
            counts["trained"] = self.n_trained
        return counts

    def close(self) -> None:
        self.tokens.close()
        self.docs.close()
        if self.mask is not None:
            self.mask.close()


@dataclass
class TokenShard:
    """One split of one source in the cache: `tokens`, `document_ends` and `loss_mask` open lazily
    as memory maps. `n_trained` counts the tokens trained on as targets; it is None for a shard
    without a loss mask (plain text: every token is trained on)."""

    stem: Path
    n_tokens: int
    n_documents: int
    dtype: str
    n_trained: int | None = None
    image_size: int | None = None  # an image-text source's shard: its documents' images (runtime/data/images.py)
    _maps: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def images(self) -> np.ndarray | None:
        """(n_documents, S, S, 3) uint8: the k-th document's image; None for a text source's shard."""
        if self.image_size is None:
            return None
        if "images" not in self._maps:
            from .images import open_images

            self._maps["images"] = open_images(shard_file(self.stem, "images"), self.n_documents, self.image_size)
        return self._maps["images"]

    @property
    def loss_mask(self) -> np.ndarray | None:
        """(n_tokens,) uint8: 1 where the token is a trained target, 0 where masked; None without a mask."""
        return None if self.n_trained is None else self._map("mask", np.dtype(np.uint8), self.n_tokens)

    @property
    def trained_tokens(self) -> int:
        return self.n_tokens if self.n_trained is None else self.n_trained

    @property
    def tokens(self) -> np.ndarray:
        return self._map("tokens", np.dtype(self.dtype), self.n_tokens)

    @property
    def document_ends(self) -> np.ndarray:
        return self._map("docs", np.dtype(np.uint64), self.n_documents)

    def _map(self, suffix: str, dtype: np.dtype, count: int) -> np.ndarray:
        if suffix not in self._maps:
            # A plain ndarray view of the map: still paged in lazily, without np.memmap's slicing overhead.
            self._maps[suffix] = (
                np.memmap(shard_file(self.stem, suffix), dtype=dtype, mode="r", shape=(count,)).view(np.ndarray)
                if count else np.zeros(0, dtype)
            )
        return self._maps[suffix]

    def __getstate__(self):  # memory maps are reopened after pickling (DataLoader workers, spawn)
        return {**self.__dict__, "_maps": {}}
