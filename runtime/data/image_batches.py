"""A batch's images (model.vision): which image and patch each position holds.

A placeholder at stream position i belongs to document d (found from the shard's document ends, as
document masking finds it) and holds patch i - start(d) (an image document starts with its image
tokens; the k-th document of a shard holds its k-th image: data/images.py). `ImageRows` gathers the
distinct images of a batch's rows and each input position's (image, patch); targets that are image
tokens are -100 (the loss is on text only). `image_rows` cuts a batch's images to a micro-batch's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tabula.compiler.vision import ImageInput


class ImageRows:
    """The image side of a batch being read (runtime/data/sampler.py _Rows): which image and patch each
    position of each row holds (-1, -1 at text), by (shard, document)."""

    def __init__(self, n: int, seq_len: int, image_id: int, n_patches: int):
        self.image_id, self.n_patches = image_id, n_patches
        self.documents = np.full((n, seq_len), -1, dtype=np.int64)
        self.patches = np.full((n, seq_len), -1, dtype=np.int64)
        self.shards: list[Any] = [None] * n

    def read(self, row: int, shard: Any, where: slice | np.ndarray, tokens: np.ndarray) -> None:
        """Row `row` read from `shard` at stream positions `where` (tokens: the row's seq_len + 1)."""
        if getattr(shard, "images", None) is None:
            return
        positions = (np.arange(where.start, where.stop) if isinstance(where, slice) else where)[:-1]
        at = tokens[:-1] == self.image_id
        ends = shard.document_ends
        documents = np.searchsorted(ends, positions, side="right")
        starts = np.where(documents > 0, ends[np.maximum(documents - 1, 0)].astype(np.int64), 0)
        patches = positions - starts
        at &= (patches < self.n_patches) & (documents < len(shard.images))  # an image token written in a caption is text
        self.documents[row] = np.where(at, documents, -1)
        self.patches[row] = np.where(at, patches, -1)
        self.shards[row] = shard

    def targets(self, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """`targets` with -100 where the target is an image token: the loss is on text only."""
        return np.where(tokens[:, 1:] == self.image_id, -100, targets)

    def input(self) -> ImageInput | None:
        """The distinct images of the rows and each position's index (image * n_patches + patch, -1: text)."""
        keys: dict[tuple[int, int], int] = {}
        pixels: list[np.ndarray] = []
        index = np.full(self.documents.shape, -1, dtype=np.int64)
        for row, shard in enumerate(self.shards):
            if shard is None:
                continue
            for document in np.unique(self.documents[row][self.documents[row] >= 0]).tolist():
                key = (id(shard), document)
                if key not in keys:
                    keys[key] = len(pixels)
                    pixels.append(shard.images[document])
                at = self.documents[row] == document
                index[row, at] = keys[key] * self.n_patches + self.patches[row, at]
        if not pixels:
            return None
        return ImageInput(torch.from_numpy(np.stack(pixels)), torch.from_numpy(index), self.n_patches)


def image_rows(batch: Any, lo: int = 0, hi: int | None = None) -> dict[str, ImageInput]:
    """The keyword an engine's forward_backward or evaluate takes for rows lo:hi of `batch`: {} without
    images, else {"images": the images those rows hold, renumbered}."""
    images: ImageInput | None = getattr(batch, "images", None)
    if images is None:
        return {}
    index = images.patch_index[lo:hi]
    used = torch.unique(index[index >= 0] // images.n_patches)  # sorted image numbers
    if used.numel() == 0:
        return {}
    renumber = torch.full((images.pixels.size(0),), -1, dtype=torch.int64)
    renumber[used] = torch.arange(used.numel())
    image, patch = index.div(images.n_patches, rounding_mode="floor"), index.remainder(images.n_patches)
    index = torch.where(index >= 0, renumber[image.clamp(min=0)] * images.n_patches + patch, index)
    return {"images": ImageInput(images.pixels[used], index, images.n_patches)}
