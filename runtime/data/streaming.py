"""Streaming a source instead of caching it: documents of local jsonl/parquet files (or any
`datasets` iterable) read through `datasets` streaming, tokenized and packed into training windows
on the fly, sharded so that every (rank, worker) reads distinct documents, with a position that
a checkpoint holds.

Sharding: shard `rank * workers + worker` of `world_size * workers`, by
`datasets.distributed.split_dataset_by_node` (whole files per shard where the file count divides
evenly, else every n-th document): shards never share a document.

Resume guarantee: exact (stream_loader.py). The state holds each worker's `datasets` iterator
state_dict (its shard and example offset: local files seek to the record), the epoch, and the packed
tokens not yet handed out, so a restored stream yields the same windows it would have.

A `cache: false` source is not read into the token cache: `prepare` records a `StreamPlan` on the
PreparedData (the sources, the filters and transforms to apply, the tokenizer), and the sampler
reads the rows of this rank from its stream loader (stream_loader.py), each worker reading one
shard. A streamed source holds no validation split: evaluation covers the cached sources only (a
run whose every source streams does not evaluate). Filters run per worker shard: a dedup filter
drops repeats within one worker's shard only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import DataError


def shard_of(rank: int, world_size: int, worker: int = 0, workers: int = 1) -> tuple[int, int]:
    """(shard index, shard count) of a data-loader worker of a rank."""
    if not (0 <= rank < world_size and 0 <= worker < workers):
        raise ValueError(f"rank {rank} of {world_size}, worker {worker} of {workers}: out of range")
    return rank * workers + worker, world_size * workers


@dataclass(frozen=True)
class StreamSource:
    """A streamed source as the loader opens it: local `files` of `format` (jsonl or parquet), or
    a hub dataset (`hub`: name, config, split, revision), its documents in `text_field`."""

    name: str
    kind: str
    text_field: str = "text"
    files: tuple[str, ...] = ()
    format: str = "jsonl"
    hub: dict[str, Any] = field(default_factory=dict)
    max_documents: int | None = None


@dataclass(frozen=True)
class StreamPlan:
    """What the stream loaders of a run need: the streamed sources (by name, in spec order), every
    source's name (transforms draw by source index), the filters and transforms, the seed, the
    worker processes a rank runs for each source, and the tokenizer."""

    sources: dict[str, StreamSource]
    all_sources: tuple[str, ...]
    filters: tuple[Any, ...]
    transforms: tuple[Any, ...]
    seed: int
    workers: int
    tokenizer_json: str = ""
    eos_id: int = 0


def open_dataset(source: StreamSource) -> Any:
    """The `datasets` IterableDataset of a streamed source. Raises DataError in one line naming the
    source where it cannot be opened (a hub dataset offline, an unknown name)."""
    try:
        if source.kind == "hub":
            import datasets

            hub = source.hub
            dataset = datasets.load_dataset(hub["name"], hub.get("config"), split=hub.get("split", "train"), streaming=True,
                                            revision=hub.get("revision"))
        else:
            import datasets

            builder = {"jsonl": "json", "parquet": "parquet"}[source.format]  # the formats the spec lets stream
            dataset = datasets.load_dataset(builder, data_files=sorted(source.files), split="train", streaming=True)
    except Exception as error:  # offline, unknown dataset, a bad file: all one clear line
        lines = str(error).strip().splitlines() or [type(error).__name__]
        where = f"hub dataset {source.hub.get('name')!r}" if source.kind == "hub" else f"{len(source.files)} {source.format} file(s)"
        raise DataError(f"cannot stream {where}: {type(error).__name__}: {lines[0]}", source=source.name) from None
    if source.max_documents is not None:
        dataset = dataset.take(source.max_documents)
    return dataset


def first_texts(source: StreamSource, max_chars: int) -> Iterator[str]:
    """The first documents of a stream, up to `max_chars` characters in all (a tokenizer's sample)."""
    left = max_chars
    for record in open_dataset(source):
        text = record.get(source.text_field)
        if isinstance(text, str) and text:
            yield text[:left]
            left -= min(len(text), left)
            if left <= 0:
                return


def stream_plan(spec: Any, readers: dict, tokenizer_json: str, eos_id: int) -> StreamPlan | None:
    """What the stream loaders need for the spec's streamed sources (None where none streams): `readers`
    open each source's files (runtime/data/sources.py), the tokenizer is the prepared one."""
    data = spec.data
    sources = stream_sources(spec, readers)
    if not sources:
        return None
    return StreamPlan(sources, tuple(data.sources), tuple(data.filters), tuple(data.transforms), spec.seed, data.stream_workers,
                      tokenizer_json, eos_id)


def stream_sources(spec: Any, readers: dict) -> dict[str, StreamSource]:
    """The spec's streamed sources (cache: false) as the loader opens them, by name in spec order."""
    sources = {}
    for name in spec.data.streamed_sources:
        source = spec.data.sources[name]
        if source.kind == "hub":
            hub = {"name": source.name, "config": source.config, "split": source.split, "revision": source.revision}
            sources[name] = StreamSource(name, "hub", source.text_field, hub=hub, max_documents=source.max_documents)
        else:
            sources[name] = StreamSource(name, "files", source.text_field, tuple(str(path) for path in readers[name].files), source.format)
    return sources
