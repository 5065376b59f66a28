"""`prepare(spec)`: from the spec's `data:` section to token shards in the cache.

Steps, for a fingerprint not yet in the cache: read each source's documents, run the filters
in order, hold out the validation split, spool the kept documents to disk; train (or load) the
tokenizer; tokenize the spools in worker processes into packed token shards; write the entry
atomically. With the fingerprint in the cache, it only opens the entry.

A streamed source (`cache: false`) is not read into the entry: the PreparedData carries a
StreamPlan (streaming.py) that the sampler's stream loaders read during training, and the report
lists it under `streamed`. A trained tokenizer trains on the cached sources of its train_on, or,
where every one of them streams, on the first documents of the streams (up to max_chars).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tokenizers import Tokenizer

from . import tokenize_worker
from .conversations import ChatData, SkipLog
from .cache import FileDigests, PendingEntry, cache_root, check_writable, fingerprint
from .errors import DataError
from .filters import FilterChain
from .images import ImageCaption, ImageSpool, image_meta, image_tokens, images_complete
from .progress import Progress
from .records import Conversation, RecordError
from .shards import ShardWriter, Spool, SpoolWriter, TokenShard, token_dtype
from .sources import bad_record, open_source
from .streaming import StreamPlan, first_texts, open_dataset, stream_plan, stream_sources
from .tokenizer import LOADERS, TRAINERS, file_path, special_ids, tokenizer_hash
from .transforms import Augmenter

SPLITS = ("train", "val")
CHUNK_BYTES = 1 << 20  # text per worker task: big enough to amortise, small enough to keep memory flat
MAX_WARNINGS = 20


@dataclass
class PreparedData:
    """The prepared corpus: the tokenizer and the packed token shards of every source.

    `train[name]` and `val[name]` are TokenShards (tokens read lazily through memory maps);
    `report` is what `tabula prepare --json` prints; `directory` is the cache entry."""

    directory: Path
    fingerprint: str
    tokenizer: Tokenizer
    tokenizer_json: str
    tokenizer_hash: str
    eos_id: int
    pad_id: int
    vocab_size: int
    train: dict[str, TokenShard]
    val: dict[str, TokenShard]
    document_masking: bool
    cache_hit: bool
    report: dict[str, Any] = field(default_factory=dict)
    streams: StreamPlan | None = None  # the streamed sources (cache: false), read during training
    image_id: int | None = None  # model.vision: the image token's id, and the image tokens an image takes
    n_patches: int = 0

    @property
    def sources(self) -> list[str]:
        """The cached sources, then the streamed ones."""
        return [*self.train, *(self.streams.sources if self.streams is not None else ())]


def prepare(spec: Any, *, cache_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> PreparedData:
    """Prepare `spec.data` (a Spec): returns the PreparedData from the cache, building the entry
    first when its fingerprint is new. Raises DataError for bad input; never leaves a partial entry."""
    started = time.perf_counter()
    data = spec.data
    base_dir = spec_base_dir(spec)
    root = cache_root(cache_dir)
    try:
        readers = {name: open_source(name, source, base_dir) for name, source in data.sources.items()}
        chat = ChatData(data, base_dir) if data.supervised_sources else None
        digests = FileDigests(root)
        key = fingerprint(_fingerprint_parts(spec, readers, digests, base_dir, chat))
        entry = root / key
        hit = entry_is_complete(entry)
        if not hit:
            check_writable(root)
            _build(spec, readers, root, key, progress or _quiet, chat)
        digests.save()
        prepared = open_entry(entry, document_masking=data.packing.document_masking, cache_hit=hit)
        prepared.streams = stream_plan(spec, readers, prepared.tokenizer_json, prepared.eos_id)
        for source in prepared.streams.sources.values() if prepared.streams is not None else ():
            if source.kind == "hub":  # offline or unknown: one line now, not at the first training step
                open_dataset(source)
    except OSError as error:  # a full disk, a file that vanished mid-read: one line naming the file
        raise _io_error(error, root) from None
    prepared.report.update(cache="hit" if hit else "miss", cache_dir=str(root), seconds=round(time.perf_counter() - started, 3))
    return prepared


def find_prepared(spec: Any, *, cache_dir: str | os.PathLike | None = None) -> PreparedData | None:
    """The spec's prepared data where the cache already holds it, else None; builds nothing.
    Raises DataError where the sources cannot be read (the fingerprint hashes their contents)."""
    base_dir = spec_base_dir(spec)
    root = cache_root(cache_dir)
    try:
        readers = {name: open_source(name, source, base_dir) for name, source in spec.data.sources.items()}
        chat = ChatData(spec.data, base_dir) if spec.data.supervised_sources else None
        entry = root / fingerprint(_fingerprint_parts(spec, readers, FileDigests(root), base_dir, chat))
        if not entry.is_dir() or not entry_is_complete(entry):
            return None
        prepared = open_entry(entry, document_masking=spec.data.packing.document_masking)
        prepared.streams = stream_plan(spec, readers, prepared.tokenizer_json, prepared.eos_id)
        return prepared
    except OSError as error:
        raise _io_error(error, root) from None


def open_entry(entry: Path, *, document_masking: bool = False, cache_hit: bool = True) -> PreparedData:
    """Open a complete cache entry (a folder written by prepare)."""
    meta = json.loads((entry / "meta.json").read_text())
    tokenizer_json = (entry / "tokenizer.json").read_text()
    images = meta.get("images") or {"sources": []}
    shards = {
        split: {
            name: TokenShard(entry / f"{split}-{name}", counts[split]["tokens"], counts[split]["documents"], meta["dtype"],
                             counts[split].get("trained"), images["size"] if name in images["sources"] else None)
            for name, counts in meta["shards"].items()
        }
        for split in SPLITS
    }
    return PreparedData(
        directory=entry, fingerprint=meta["fingerprint"], tokenizer=Tokenizer.from_str(tokenizer_json),
        tokenizer_json=tokenizer_json, tokenizer_hash=meta["tokenizer_hash"], eos_id=meta["eos_id"],
        pad_id=meta["pad_id"], vocab_size=meta["vocab_size"], train=shards["train"], val=shards["val"],
        document_masking=document_masking, cache_hit=cache_hit, report=dict(meta["report"]),
        image_id=images.get("token_id"), n_patches=images.get("n_patches", 0),
    )


def entry_is_complete(entry: Path) -> bool:
    """Whether `entry` holds a whole cache entry: meta.json, tokenizer.json and every shard at its
    recorded size. A damaged one (files deleted or truncated by hand) is moved aside to be rebuilt."""
    if not entry.is_dir():
        return False
    try:
        meta = json.loads((entry / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        complete = (entry / "tokenizer.json").is_file() and all(
            os.path.getsize(entry / f"{split}-{name}.tokens") == counts[split]["tokens"] * itemsize
            and os.path.getsize(entry / f"{split}-{name}.docs") == counts[split]["documents"] * 8
            and ("trained" not in counts[split] or os.path.getsize(entry / f"{split}-{name}.mask") == counts[split]["tokens"])
            and images_complete(entry / f"{split}-{name}", meta, name, counts[split]["documents"])
            for name, counts in meta["shards"].items()
            for split in SPLITS
        )
    except (OSError, ValueError, KeyError, TypeError):
        complete = False
    if not complete:
        discard_entry(entry)
    return complete


def discard_entry(entry: Path) -> None:
    """Remove a cache entry: renamed first, so no reader ever opens it half-deleted."""
    doomed = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-discard")
    try:
        os.rename(entry, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def save_tokenizer(prepared: PreparedData, path: str | os.PathLike) -> Path:
    """Write the tokenizer's JSON to `path` (a file, or a folder to hold tokenizer.json); returns the file."""
    target = Path(path)
    if target.is_dir():
        target = target / "tokenizer.json"
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(prepared.tokenizer_json)
    os.replace(temporary, target)
    return target


def spec_base_dir(spec: Any) -> Path:
    """The folder relative paths in the spec are relative to (the spec file's), else the cwd."""
    # Set by the loader (schemas/loader.py); a Spec built in code has none.
    base = getattr(spec, "base_dir", None) or getattr(spec, "_base_dir", None)
    return Path(base) if base else Path.cwd()


# ---------------------------------------------------------------- building an entry


def _fingerprint_parts(spec: Any, readers: dict, digests: FileDigests, base_dir: Path, chat: ChatData | None) -> dict[str, Any]:
    data = spec.data
    tokenizer: dict[str, Any] = data.tokenizer.model_dump(mode="json")
    if data.tokenizer.kind in TRAINERS:
        tokenizer["seed"] = spec.seed  # seeds the training sample
    if data.tokenizer.kind == "file":
        tokenizer["path"] = digests(file_path(data.tokenizer, base_dir))
    if data.tokenizer.kind == "tiktoken":  # where its file is does not matter: tiktoken checks it is the encoding's
        tokenizer.pop("path")
    parts = {
        "sources": {name: reader.key(digests) for name, reader in readers.items()},
        "filters": [f.model_dump(mode="json") for f in data.filters],
        "validation": data.validation.model_dump(mode="json"),
        "tokenizer": tokenizer,
    }
    if chat is not None:  # absent for plain text: data.chat changes no pretraining entry
        parts["chat"] = chat.key()
    if data.transforms:  # absent without: entries prepared before data.transforms keep their key
        parts["transforms"] = {"seed": spec.seed, "transforms": [t.model_dump(mode="json") for t in data.transforms]}
    if spec.model.vision is not None:  # the images' size and the image tokens each takes
        vision = spec.model.vision
        parts["vision"] = {"image_size": vision.encoder.image_size, "n_patches": vision.n_patches, "image_token": vision.image_token}
    return parts


def _build(spec: Any, readers: dict, root: Path, key: str, progress: Progress, chat: ChatData | None) -> None:
    pending = PendingEntry(root, key)
    try:
        warnings: list[str] = []
        clock = time.perf_counter()
        tokenizer = None
        if spec.data.tokenizer.kind in LOADERS:  # a tokenizer that cannot load fails before the long read
            tokenizer = _make_tokenizer(spec, {}, progress, chat)
        spools, report = _spool_sources(spec, readers, pending.folder, progress, warnings, chat)
        timings = {"read_and_filter": time.perf_counter() - clock}
        clock = time.perf_counter()
        tokenizer = tokenizer or _make_tokenizer(spec, spools, progress, chat)
        timings["tokenizer"] = time.perf_counter() - clock
        clock = time.perf_counter()
        eos_id, pad_id = special_ids(spec.data.tokenizer, tokenizer)
        vocab_size = tokenizer.get_vocab_size()
        dtype = token_dtype(vocab_size)
        tokenizer_json = tokenizer.to_str()
        counts, fitted = _tokenize(spec, spools, tokenizer_json, eos_id, dtype, pending.folder, progress, chat)
        timings["tokenize"] = time.perf_counter() - clock
        for (split, name), spool in spools.items():
            spool.path.unlink()
            shard = counts[name][split]
            trained = shard.get("trained", shard["tokens"]) - image_tokens(spec, name, shard["documents"])
            report["sources"][name][split].update(tokens=shard["tokens"], trained_tokens=trained, masked_tokens=shard["tokens"] - trained)
        for name, source in report["sources"].items():
            for count in ("tokens", "trained_tokens", "masked_tokens"):
                source[count] = source["train"][count] + source["val"][count]
            if name in fitted:
                _check_fitted(spec, name, fitted[name], counts[name], source, warnings)
        report["streamed"] = {
            name: {"kind": spec.data.sources[name].kind, "workers_per_rank": spec.data.stream_workers, "validation": "none",
                   **({"files": len(readers[name].files)} if hasattr(readers[name], "files") else {})}
            for name in spec.data.streamed_sources
        }
        report["totals"] = {count: sum(source[count] for source in report["sources"].values())
                            for count in ("tokens", "trained_tokens", "masked_tokens")}
        if chat is not None:
            report["chat"] = chat.report()
        report.update(
            fingerprint=key, warnings=warnings, build_seconds={k: round(v, 3) for k, v in timings.items()},
            tokenizer={"kind": spec.data.tokenizer.kind, "vocab_size": vocab_size, "hash": tokenizer_hash(tokenizer),
                       "eos_id": eos_id, "pad_id": pad_id, "dtype": dtype.name},
        )
        (pending.folder / "tokenizer.json").write_text(tokenizer_json)
        meta = {
            "fingerprint": key, "tokenizer_hash": tokenizer_hash(tokenizer), "eos_id": eos_id, "pad_id": pad_id,
            "vocab_size": vocab_size, "dtype": dtype.name, "shards": counts, "report": report,
            **({"images": images} if (images := image_meta(spec, tokenizer)) is not None else {}),
        }
        (pending.folder / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks the entry complete
        pending.commit()
    except BaseException:
        pending.discard()
        raise


def _spool_sources(spec: Any, readers: dict, folder: Path, progress: Progress, warnings: list[str], chat: ChatData | None):
    """Read, filter and split every source into spools; returns ({(split, name): Spool}, report).
    A conversation is rendered by the chat template first (a record it refuses is a bad record);
    filters see its messages' text."""
    data = spec.data
    chain = FilterChain(list(data.filters))
    fraction, cap = data.validation.fraction, data.validation.max_documents
    spools: dict[tuple[str, str], Spool] = {}
    report: dict[str, Any] = {"sources": {}}
    augmenter = Augmenter(data.transforms, spec.seed, list(readers)) if data.transforms else None

    def warn(message: str) -> None:
        if len(warnings) < MAX_WARNINGS:
            warnings.append(message)
        elif len(warnings) == MAX_WARNINGS:
            warnings.append("... more warnings left out")

    for name, reader in readers.items():
        if name in data.streamed_sources:  # read during training (cache: false)
            continue
        writers = {split: SpoolWriter(folder / f"{split}-{name}.spool") for split in SPLITS}
        images = ImageSpool(spec.model.vision, reader, folder, name, SPLITS) if name in data.image_sources else None
        read = kept = held = 0
        skipped = SkipLog()

        def warn_source(message: str) -> None:
            skipped.add(message)
            warn(message)

        for document in reader.documents(warn_source, workers=spec.data.workers or os.cpu_count() or 1):
            read += 1
            if read % 1000 == 0:
                progress(f"reading {name} (documents)", read, None)
            text, entry, characters, image = document, document, None, None
            if isinstance(document, ImageCaption):  # the image tokens then the caption; filters see the caption
                if images is None or (decoded := images.entry(document, warn_source)) is None:
                    continue
                (text, entry, image), characters = decoded, len(decoded[0])
            elif isinstance(document, Conversation):
                assert chat is not None  # a source with records makes the pipeline resolve a template
                try:
                    entry, characters = chat.spool_entry(document)
                except RecordError as error:
                    bad_record(name, data.sources[name], f"{document.origin}: {error}", warn_source, path=("data", "chat", "template"))
                    continue
                text = document.text()
            if not chain.keep(name, text):
                continue
            # Every round(1/fraction)-th kept document is held out: an exact, spread-out share.
            to_val = math.floor((kept + 1) * fraction + 0.5) > math.floor(kept * fraction + 0.5) and (cap is None or held < cap)
            if augmenter is not None and not to_val and isinstance(document, str):
                entry = augmenter.apply(name, kept - held, entry)
            writers["val" if to_val else "train"].add(entry, characters)
            if image is not None and images is not None:
                images.add("val" if to_val else "train", image)
            held += to_val
            kept += 1
        progress(f"reading {name} (documents)", read, read)
        for split in SPLITS:
            spools[split, name] = writers[split].close()
        image_counts = images.close() if images is not None else None
        if read == 0:
            raise DataError(f"the source yielded no documents ({_why_empty(reader, skipped)})", source=name)
        emptied = chain.emptied_by(name)
        if emptied is not None:
            kind = data.filters[emptied].kind
            raise DataError(f"filter {emptied} ({kind}) dropped every document of source {name!r} ({read} read)",
                            source=name, path=("data", "filters", emptied))
        if spools["train", name].documents == 0:
            raise DataError(f"no training documents left after the validation split ({kept} kept)", source=name,
                            path=("data", "validation"))
        if fraction > 0 and held == 0:
            warn(f"source {name!r}: no validation documents ({kept} kept x fraction {fraction:g} rounds to 0); "
                 "evaluation will not cover it")
        report["sources"][name] = {
            "documents": read,
            "skipped": skipped.report(),
            "filters": chain.report(name),
            **{split: {"documents": spools[split, name].documents, "characters": spools[split, name].characters, "tokens": 0}
               for split in SPLITS},
        }
        report["sources"][name]["characters"] = sum(spools[s, name].characters for s in SPLITS)
        if image_counts is not None:
            report["sources"][name]["images"] = image_counts
    if augmenter is not None:
        report["transforms"] = augmenter.report()
    return spools, report


def _why_empty(reader: Any, skipped: SkipLog) -> str:
    if skipped.count:  # with on_error: skip, e.g. a text_field that no record has
        return f"{skipped.count} skipped; the first: {skipped.first[0]}"
    files = getattr(reader, "files", None)
    if files is not None:
        return f"{len(files)} file{'s' if len(files) != 1 else ''} read, all empty: {files[0]}{', ...' if len(files) > 1 else ''}"
    return "it is empty"


def _transform_tokens(spec: Any) -> list[str]:
    """The special tokens data.transforms write (fill-in-the-middle and span sentinels), and model.vision's image token."""
    vision = [spec.model.vision.image_token] if spec.model.vision is not None else []
    return (Augmenter(spec.data.transforms, spec.seed, list(spec.data.sources)).tokens if spec.data.transforms else []) + vision


def _make_tokenizer(spec: Any, spools: dict, progress: Progress, chat: ChatData | None) -> Tokenizer:
    tokenizer_spec = spec.data.tokenizer
    if tokenizer_spec.kind in LOADERS:
        progress("loading tokenizer", 0, 1)
        tokenizer = LOADERS[tokenizer_spec.kind](tokenizer_spec, spec_base_dir(spec))
        progress("loading tokenizer", 1, 1)
        tokenizer = chat.add_special_tokens(tokenizer) if chat is not None else tokenizer
        missing = [token for token in _transform_tokens(spec) if tokenizer.token_to_id(token) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        return tokenizer
    names = tokenizer_spec.train_on or list(spec.data.sources)
    cached = [name for name in names if name not in spec.data.streamed_sources]
    if not cached:  # every source it trains on streams: the first documents of each stream
        return _train_on_streams(spec, names, progress, chat)
    names = cached
    total = sum(spools["train", name].characters for name in names)
    share = min(1.0, tokenizer_spec.max_chars / max(total, 1))
    sample_chars = [0]

    def sample() -> Iterator[str]:
        # A seeded share of each source's training documents, spread over the whole corpus.
        for index, name in enumerate(names):
            spool = spools["train", name]
            select = np.random.default_rng([spec.seed, index]).random(spool.documents) < share
            for text in spool.texts(select):
                if sample_chars[0] >= tokenizer_spec.max_chars:
                    return
                if chat is not None and name in chat.sources:
                    text = chat.sample_text(text)
                if name in spec.data.image_sources:  # the caption alone: image tokens are special
                    text = text.replace(spec.model.vision.image_token, "")
                text = text[: tokenizer_spec.max_chars - sample_chars[0]]
                sample_chars[0] += len(text)
                yield text

    progress(f"training {tokenizer_spec.kind} tokenizer", 0, 1)
    # A template's special tokens are trained in as special tokens: vocab_size stays what the spec says.
    specials = [*(chat.template.special_tokens if chat is not None else ()), *_transform_tokens(spec)]
    tokenizer = TRAINERS[tokenizer_spec.kind](tokenizer_spec, sample(), min(total, tokenizer_spec.max_chars), specials)
    progress(f"training {tokenizer_spec.kind} tokenizer", 1, 1)
    return tokenizer


def _train_on_streams(spec: Any, names: list[str], progress: Progress, chat: ChatData | None) -> Tokenizer:
    tokenizer_spec = spec.data.tokenizer
    sources = stream_sources(spec, {name: open_source(name, spec.data.sources[name], spec_base_dir(spec)) for name in names})
    share = tokenizer_spec.max_chars // len(names)
    texts = [text for name in names for text in first_texts(sources[name], share)]
    progress(f"training {tokenizer_spec.kind} tokenizer on the streams' first documents", 0, 1)
    specials = [*(chat.template.special_tokens if chat is not None else ()), *_transform_tokens(spec)]
    tokenizer = TRAINERS[tokenizer_spec.kind](tokenizer_spec, iter(texts), sum(map(len, texts)), specials)
    progress(f"training {tokenizer_spec.kind} tokenizer on the streams' first documents", 1, 1)
    return tokenizer


def _tokenize(spec, spools, tokenizer_json, eos_id, dtype, folder, progress, chat):
    """Tokenize every spool into a packed shard, in worker processes. Returns (tokens and documents
    (and trained tokens, for conversations) per source and split, {source: {cut, dropped}} for
    conversations cut to or dropped by data.chat.max_tokens)."""
    total = sum(spool.size for spool in spools.values())
    workers = spec.data.workers or os.cpu_count() or 1
    workers = max(1, min(workers, math.ceil(total / CHUNK_BYTES)))
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = context.Pool(workers, initializer=tokenize_worker.start, initargs=(tokenizer_json, eos_id, dtype.name))
    else:
        tokenize_worker.start(tokenizer_json, eos_id, dtype.name, in_worker=False)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    fitted: dict[str, dict[str, int]] = {}
    done = 0
    try:
        for (split, name), spool in spools.items():
            chats = chat is not None and name in chat.sources
            writer = ShardWriter(folder / f"{split}-{name}", masked=chats)
            encode, extra = tokenize_worker.encode_chunk, ()
            if chats:
                encode, extra = tokenize_worker.encode_chat_chunk, (chat.spec.max_tokens, chat.spec.truncation)
                fitted.setdefault(name, {"cut": 0, "dropped": 0})

            def add(result, size) -> None:
                nonlocal done
                writer.add(*result[:3])
                if chats:
                    fitted[name]["cut"] += result[3]
                    fitted[name]["dropped"] += result[4]
                done += size
                progress("tokenizing (bytes of text)", done, total)

            in_flight: deque = deque()  # (task, its bytes of text)
            for chunk in spool.chunks(CHUNK_BYTES):
                size = int(chunk[2][-1])
                if pool is None:
                    add(encode(*chunk, *extra), size)
                    continue
                # At most two chunks a worker in flight: memory stays flat whatever the corpus size.
                in_flight.append((pool.apply_async(encode, (*chunk, *extra)), size))
                while in_flight and (len(in_flight) > 2 * workers):
                    add(*_done(in_flight))
            while in_flight:
                add(*_done(in_flight))
            writer.close()
            counts.setdefault(name, {})[split] = writer.counts()
    finally:
        if pool:
            pool.terminate()
            pool.join()
    return counts, fitted


def _done(in_flight: deque) -> tuple[Any, int]:
    task, size = in_flight.popleft()
    return task.get(), size


def _check_fitted(spec: Any, name: str, fitted: dict[str, int], counts: dict, report: dict, warnings: list[str]) -> None:
    """Report conversations cut to or dropped by max_tokens; refuse a source left without training data."""
    chat = spec.data.chat
    report["max_tokens"] = {"cut": fitted["cut"], "dropped": fitted["dropped"]}
    if fitted["dropped"]:
        warnings.append(f"source {name!r}: {fitted['dropped']} conversation(s) dropped: no trained token left in "
                        f"max_tokens {chat.max_tokens} after cutting on the {chat.truncation}")
    if counts["train"]["documents"] == 0:
        raise DataError(f"no training conversation left: every one lost its trained tokens to max_tokens {chat.max_tokens} "
                        f"(cut on the {chat.truncation}); raise max_tokens or cut on the other side",
                        source=name, path=("data", "chat", "max_tokens"))


def _quiet(stage: str, done: int, total: int | None) -> None:
    pass


def _io_error(error: OSError, root: Path) -> DataError:
    """An OSError as a DataError: the cache's own files name the cache and how to move it."""
    name = error.filename
    reason = error.strerror or _first_line(error)
    try:
        in_cache = name is not None and Path(name).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        in_cache = False
    if in_cache:
        return DataError(f"cannot write the token cache {root}: {reason} ({name}); "
                         "free space there, or set --cache-dir or TABULA_CACHE_DIR to another folder")
    return DataError(f"cannot read {name}: {reason}" if name else f"input/output error: {reason}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
