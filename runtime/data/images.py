"""Image-text data (a `kind: image_text` source, for a model with model.vision).

Reading: a folder of images with .txt captions of the same stem, webdataset tars (members grouped
by key: key.png with key.txt), or jsonl records naming an image (relative to the jsonl file) and its
caption. Each pair is an `ImageCaption`; at prepare it becomes a document of `n_patches` image
tokens then the caption (the worker appends the end-of-document token), and its image, decoded
and resized to the encoder's image_size, is appended to `<split>-<name>.images` (uint8, (n, S, S, 3)):
the k-th document of a shard holds the k-th image.

Batches are image_batches.py's. Pillow decodes (imported where an image is read); no torch here.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tabula.schemas.data import ImageTextSource

from .errors import DataError
from .sources import SOURCES, Digest, Warn, _expand, _relative

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CAPTION_SUFFIXES = (".txt", ".caption", ".cap")


@dataclass
class ImageCaption:
    """One image-text pair: `load()` gives the image file's bytes; `origin` names it in messages."""

    caption: str
    load: Callable[[], bytes]
    origin: str


def decode_image(data: bytes, size: int) -> np.ndarray:
    """An image file's bytes as uint8 (size, size, 3) RGB, resized (bilinear) without keeping the aspect ratio."""
    from PIL import Image  # runtime only: Pillow decodes at prepare

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).copy()


@SOURCES.register("image_text")
class ImageTextReader:
    """`kind: image_text`: image-caption pairs from folders, webdataset tars or jsonl files."""

    def __init__(self, name: str, spec: ImageTextSource, base_dir: Path):
        self.name, self.spec, self.base_dir = name, spec, base_dir
        if spec.format == "folder":
            self.files = self._folder_images()
        else:
            self.files = _expand(name, spec.paths, base_dir)

    def _folder_images(self) -> list[Path]:
        """Images under each folder (or matched by each pattern), sorted."""
        found: list[Path] = []
        for index, pattern in enumerate(self.spec.paths):
            full = Path(pattern) if os.path.isabs(pattern) else self.base_dir / pattern
            if full.is_dir():
                matched = sorted(p for p in full.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            else:
                matched = [p for p in _expand(self.name, [pattern], self.base_dir) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not matched:
                raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {pattern!r} (looked in {self.base_dir})",
                                source=self.name, path=("data", "sources", self.name, "paths", index))
            found += matched
        return found

    def key(self, digest: Digest) -> dict[str, Any]:
        fields = self.spec.model_dump(mode="json", exclude={"paths"})
        files = list(self.files)
        if self.spec.format == "folder":
            files += [c for p in self.files if (c := _caption_file(p)) is not None]
        elif self.spec.format == "jsonl":  # the images the records name are part of the contents
            files += [path for path in self._jsonl_images() if path.is_file()]
        return {**fields, "files": [[_relative(path, self.base_dir), path.stat().st_size, digest(path)] for path in files]}

    def documents(self, warn: Warn, workers: int = 1) -> Iterator[ImageCaption]:
        read = {"folder": self._read_folder, "webdataset": self._read_tar, "jsonl": self._read_jsonl}[self.spec.format]
        for path in self.files:
            yield from read(path, warn)

    # ------------------------------------------------------------ formats

    def _read_folder(self, path: Path, warn: Warn) -> Iterator[ImageCaption]:
        caption = _caption_file(path)
        if caption is None:
            self._bad(f"{path}: no caption file ({' or '.join(path.stem + s for s in CAPTION_SUFFIXES)})", warn)
            return
        yield ImageCaption(caption.read_text(encoding="utf-8").strip(), path.read_bytes, str(path))

    def _read_tar(self, path: Path, warn: Warn) -> Iterator[ImageCaption]:
        try:
            archive = tarfile.open(path)
        except (OSError, tarfile.TarError) as error:
            self._bad(f"{path}: not a readable tar file ({error})", warn)
            return
        with archive:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in archive.getmembers():
                if member.isfile():
                    folder, _, base = member.name.rpartition("/")
                    stem, dot, suffix = base.partition(".")  # webdataset: the key is up to the first dot
                    groups.setdefault(f"{folder}/{stem}", {})[dot + suffix.lower()] = member
            for key, members in groups.items():
                image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
                caption = next((members[s] for s in CAPTION_SUFFIXES if s in members), None)
                if image is None or caption is None:
                    self._bad(f"{path}: sample {key.lstrip('/')!r} has no {'image' if image is None else 'caption'}", warn)
                    continue
                data = _extract(archive, image)
                yield ImageCaption(_extract(archive, caption).decode("utf-8").strip(), functools.partial(bytes, data), f"{path}:{image.name}")

    def _records(self, path: Path, warn: Warn) -> Iterator[tuple[int, Any]]:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    try:
                        yield number, json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as error:
                        self._bad(f"{path}:{number}: not valid JSON ({error})", warn)

    def _read_jsonl(self, path: Path, warn: Warn) -> Iterator[ImageCaption]:
        spec = self.spec
        for number, record in self._records(path, warn):
            image, caption = (record.get(spec.image_field), record.get(spec.caption_field)) if isinstance(record, dict) else (None, None)
            if not isinstance(image, str) or not isinstance(caption, str):
                field = spec.image_field if not isinstance(image, str) else spec.caption_field
                self._bad(f"{path}:{number}: no text field {field!r}", warn)
                continue
            file = path.parent / image
            yield ImageCaption(caption.strip(), file.read_bytes, f"{path}:{number} ({file})")

    def _jsonl_images(self) -> list[Path]:
        return [path.parent / record[self.spec.image_field] for path in self.files for _, record in self._records(path, lambda m: None)
                if isinstance(record, dict) and isinstance(record.get(self.spec.image_field), str)]

    def _bad(self, message: str, warn: Warn) -> None:
        if self.spec.on_error == "fail":
            raise DataError(message + " (set on_error: skip to skip such samples)", source=self.name)
        warn(f"source {self.name!r}: skipped {message}")

    def image(self, document: ImageCaption, size: int, warn: Warn) -> np.ndarray | None:
        """The document's image decoded to (size, size, 3), or None (skipped, with on_error: skip)."""
        try:
            return decode_image(document.load(), size)
        except Exception as error:  # a missing file, a truncated or foreign format: Pillow raises many kinds
            self._bad(f"{document.origin}: cannot read the image ({type(error).__name__}: {error})", warn)
            return None


def _caption_file(image: Path) -> Path | None:
    return next((c for s in CAPTION_SUFFIXES if (c := image.with_suffix(s)).is_file()), None)


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file member
    return handle.read()


class ImageWriter:
    """Appends a split's images, uint8 (S, S, 3) each, to `<stem>.images`."""

    def __init__(self, path: Path):
        self.handle, self.count = path.open("wb"), 0

    def add(self, image: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        self.count += 1

    def close(self) -> int:
        self.handle.close()
        return self.count


def open_images(path: Path, count: int, size: int) -> np.ndarray:
    """A shard's images as a read-only memory map (count, size, size, 3)."""
    if not count:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(count, size, size, 3)).view(np.ndarray)


# ---------------------------------------------------------------- prepare


class ImageSpool:
    """An image_text source's images while its documents are spooled: `entry` decodes a pair into
    (caption, spool entry: the image tokens then the caption, image); `add` appends the image to its split."""

    def __init__(self, vision: Any, reader: ImageTextReader, folder: Path, name: str, splits: tuple[str, ...]):
        self.size, self.reader = vision.encoder.image_size, reader
        self.placeholders = vision.image_token * vision.n_patches
        self.writers = {split: ImageWriter(folder / f"{split}-{name}.images") for split in splits}

    def entry(self, document: ImageCaption, warn: Warn) -> tuple[str, str, np.ndarray] | None:
        image = self.reader.image(document, self.size, warn)
        return None if image is None else (document.caption, self.placeholders + document.caption, image)

    def add(self, split: str, image: np.ndarray) -> None:
        self.writers[split].add(image)

    def close(self) -> dict[str, int]:
        return {split: writer.close() for split, writer in self.writers.items()}


def image_meta(spec: Any, tokenizer: Any) -> dict[str, Any] | None:
    """What meta.json records of the images (None without model.vision): size, image token id, patches a
    image, and the sources that hold images."""
    vision = spec.model.vision
    if vision is None:
        return None
    token_id = tokenizer.token_to_id(vision.image_token)
    if token_id is None:
        raise DataError(f"the tokenizer lacks the image token {vision.image_token!r}", path=("model", "vision", "image_token"))
    return {"size": vision.encoder.image_size, "token_id": token_id, "n_patches": vision.n_patches, "sources": spec.data.image_sources}


def image_tokens(spec: Any, name: str, documents: int) -> int:
    """The image tokens in `documents` documents of source `name` (0 for a text source): never trained as targets."""
    return documents * spec.model.vision.n_patches if name in spec.data.image_sources else 0


def images_complete(stem: Path, meta: dict[str, Any], name: str, documents: int) -> bool:
    """Whether the shard `stem` of source `name` has its images file whole (always, for a text source)."""
    images = meta.get("images")
    if not images or name not in images["sources"]:
        return True
    path = stem.with_name(stem.name + ".images")
    return path.is_file() and path.stat().st_size == documents * images["size"] ** 2 * 3
