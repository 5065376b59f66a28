"""Near-duplicate detection by MinHash with LSH banding, written small (no datasketch).

A document's shingles (word 5-grams) are hashed with crc32; `num_perm` universal hashes
(a*x + b mod p) give its signature; the signature is cut into bands, and a document whose
band equals a band already seen is a near-duplicate. Bands and rows are chosen so that the
S-curve's midpoint (1/bands)^(1/rows) is closest to `threshold`.
"""

from __future__ import annotations

import zlib

import numpy as np

_PRIME = np.uint64((1 << 61) - 1)
_SHINGLE = 5


def bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm whose threshold is closest to `threshold`."""
    best = (1, num_perm)
    best_gap = float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        gap = abs((1.0 / bands) ** (1.0 / rows) - threshold)
        if gap < best_gap:
            best, best_gap = (bands, rows), gap
    return best


class MinHashIndex:
    """Remembers the bands of documents seen; `seen_similar(text)` says whether a near-duplicate
    of `text` was added before, and adds it when not."""

    def __init__(self, threshold: float, num_perm: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        # a < 2**31 and x < 2**32 keep a*x + b inside uint64.
        self.a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
        self.bands, self.rows = bands_for(threshold, num_perm)
        self.tables: list[set[bytes]] = [set() for _ in range(self.bands)]

    def signature(self, text: str) -> np.ndarray:
        words = text.split()
        if len(words) < _SHINGLE:
            shingles = [" ".join(words)]
        else:
            shingles = [" ".join(words[i : i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1)]
        x = np.fromiter((zlib.crc32(s.encode()) for s in set(shingles)), dtype=np.uint64)
        hashed = (x[:, None] * self.a[None, :] + self.b[None, :]) % _PRIME  # (shingles, num_perm)
        return hashed.min(axis=0)

    def seen_similar(self, text: str) -> bool:
        signature = self.signature(text)
        keys = [signature[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        duplicate = any(key in table for key, table in zip(keys, self.tables))
        if not duplicate:
            for key, table in zip(keys, self.tables):
                table.add(key)
        return duplicate
