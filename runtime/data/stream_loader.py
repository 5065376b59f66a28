"""The stream loader: one rank's reader of its streamed sources (`cache: false`), in worker processes.

For each streamed source, worker `w` of rank `r` reads shard `r * workers + w` of `world_size *
workers` (streaming.shard_of): it reads documents, applies the filters and transforms, tokenizes
them and sends chunks of packed tokens, each with its stream's state after the chunk, through a
bounded queue (at most QUEUE_CHUNKS chunks a worker: memory stays flat). The consumer packs windows
of seq_len + 1 tokens, taking them from the workers in a fixed round-robin order, so what a rank
reads does not depend on which worker is faster.

Resume guarantee: exact for the same number of ranks and workers. The loader's state is, per
worker, the stream state after the last chunk the consumer took and the tokens of it not yet
handed out; restored, the workers seek to that state (local files seek to the record; a hub stream
as far as `datasets` can seek) and the windows continue at the same token. A state saved with
another number of ranks or workers is refused (DataError): its shards are other shards.

Workers are daemon processes that also end with their parent (PR_SET_PDEATHSIG): none outlives
the loader, its trainer being killed included. `close()` ends them at once.
"""

from __future__ import annotations

import base64
import binascii
import multiprocessing
import os
import queue
import sys
import weakref
from typing import Any

import numpy as np

from .errors import DataError
from .streaming import StreamPlan, open_dataset, shard_of

STATE_VERSION = 1
CHUNK_CHARS = 1 << 16  # text a worker tokenizes at once: about 16k tokens
QUEUE_CHUNKS = 4  # chunks waiting in a worker's queue at most
POLL_SECONDS = 0.5


class StreamLoader:
    """Windows of one streamed source for one rank, from `workers` worker processes (started at the
    first window)."""

    def __init__(self, plan: StreamPlan, name: str, rank: int = 0, world_size: int = 1):
        self.plan, self.name, self.rank, self.world_size = plan, name, rank, world_size
        self.workers = plan.workers
        self.shards = [shard_of(rank, world_size, worker, self.workers) for worker in range(self.workers)]
        self.states: list[dict[str, Any] | None] = [None] * self.workers  # after the last chunk taken
        self.buffers = [np.zeros(0, np.int64) for _ in range(self.workers)]
        self.turn = 0  # the worker the next window comes from
        self._processes: list[Any] = []
        self._queues: list[Any] = []
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------ reading

    def window(self, seq_len: int) -> np.ndarray:
        """The next seq_len + 1 tokens (int64) of this rank's stream; consecutive windows of one worker
        share a token, as the cached sampler's do."""
        worker = self.turn
        buffer = self.buffers[worker]
        while len(buffer) < seq_len + 1:
            buffer = np.concatenate([buffer, self._take(worker)])
        self.buffers[worker] = buffer[seq_len:]
        self.turn = (worker + 1) % self.workers
        return buffer[: seq_len + 1]

    def _take(self, worker: int) -> np.ndarray:
        if not self._processes:
            self._start()
        while True:
            try:
                item = self._queues[worker].get(timeout=POLL_SECONDS)
            except queue.Empty:
                process = self._processes[worker]
                if not process.is_alive():
                    raise DataError(f"stream worker {worker} ended (exit code {process.exitcode}) without a word",
                                    source=self.name) from None
                continue
            tokens, state = item
            if isinstance(tokens, str):  # the worker's error, in one line
                raise DataError(state, source=self.name)
            self.states[worker] = state
            return tokens.astype(np.int64)

    # ------------------------------------------------------------ processes

    def _start(self) -> None:
        dataset = open_dataset(self.plan.sources[self.name])  # in this process: a hub dataset offline fails here, in one line
        context: Any = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        for worker, (shard, shards) in enumerate(self.shards):
            out = context.Queue(maxsize=QUEUE_CHUNKS)
            process = context.Process(target=_produce, args=(self.plan, self.name, dataset, shard, shards, self.states[worker], out),
                                      name=f"tabula-stream-{self.name}-{shard}", daemon=True)
            process.start()
            self._processes.append(process)
            self._queues.append(out)
        self._finalizer = weakref.finalize(self, _stop, list(self._processes), list(self._queues))

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (none before the first window or after close)."""
        return [process.pid for process in self._processes if process.pid is not None]

    def close(self) -> None:
        """End the workers now (idempotent); a later window starts them again from the state."""
        if self._finalizer is not None:
            self._finalizer()
        self._processes, self._queues, self._finalizer = [], [], None

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: where each worker's stream is, as far as the consumer has read."""
        return {
            "version": STATE_VERSION, "source": self.name, "world_size": self.world_size, "workers": self.workers,
            "turn": self.turn,
            "streams": [{"shard": shard, "state": state, "buffer": _pack(buffer)}
                        for (shard, _), state, buffer in zip(self.shards, self.states, self.buffers)],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` (from state_dict, of this rank) stopped. Raises DataError for a state of
        another number of ranks or workers, or a damaged one."""
        saved = (state.get("world_size"), state.get("workers")) if isinstance(state, dict) else (None, None)
        if saved != (self.world_size, self.workers):
            raise DataError(f"the checkpoint's stream position was saved by {saved[0]} rank(s) x {saved[1]} worker(s), and this run "
                            f"has {self.world_size} x {self.workers}: resume with the same number of ranks and data.stream_workers "
                            "(the streams' shards differ otherwise)", source=self.name)
        try:
            streams = state["streams"]
            if [stream["shard"] for stream in streams] != [shard for shard, _ in self.shards]:
                raise ValueError(f"shards {[stream['shard'] for stream in streams]} are not this rank's")
            self.close()
            self.states = [stream["state"] for stream in streams]
            self.buffers = [_unpack(stream["buffer"]) for stream in streams]
            self.turn = int(state["turn"]) % self.workers
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise DataError(f"the checkpoint's stream position is damaged ({type(error).__name__}: {error})", source=self.name) from None


class StreamedSources:
    """A rank's stream loaders, one for each streamed source of `plan`."""

    def __init__(self, plan: StreamPlan, rank: int = 0, world_size: int = 1):
        self.loaders = {name: StreamLoader(plan, name, rank, world_size) for name in plan.sources}

    def window(self, name: str, seq_len: int) -> np.ndarray:
        return self.loaders[name].window(seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {name: loader.state_dict() for name, loader in self.loaders.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, loader in self.loaders.items():
            if name not in state:
                raise DataError("the checkpoint holds no stream position for this source (was it cached then?)", source=name)
            loader.load_state_dict(state[name])

    @property
    def pids(self) -> list[int]:
        return [pid for loader in self.loaders.values() for pid in loader.pids]

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


def _pack(tokens: np.ndarray) -> str:
    """Tokens as base64 of little-endian uint32 (a checkpoint's JSON stays small)."""
    return base64.b64encode(tokens.astype("<u4").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<u4").astype(np.int64)


def _stop(processes: list[Any], queues: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    for out in queues:
        out.cancel_join_thread()  # chunks left in the pipe are dropped: never block on them
        out.close()


# ---------------------------------------------------------------- the worker process


def _produce(plan: StreamPlan, name: str, dataset: Any, shard: int, shards: int, state: dict[str, Any] | None, out: Any) -> None:
    """A worker: chunks of tokens of shard `shard` of `shards`, each with the stream's state after it, into
    `out` (blocks while it is full) until terminated. An error is sent as (\"error\", one line)."""
    import signal

    from .tokenize_worker import die_with_parent

    # forked from a trainer whose handlers turn SIGTERM into a graceful stop: here it ends the worker; a
    # Ctrl-C reaches the whole process group, and the trainer ends its workers itself
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    try:
        _produce_chunks(plan, name, dataset, shard, shards, state, out)
    except BaseException as error:  # noqa: BLE001 - everything goes back to the consumer as one line
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return
        lines = str(error).strip().splitlines() or [type(error).__name__]
        message = error.message if isinstance(error, DataError) else f"stream shard {shard} of {shards}: {type(error).__name__}: {lines[0]}"
        out.put(("error", message))
        out.close()
        out.join_thread()


def _produce_chunks(plan: StreamPlan, name: str, dataset: Any, shard: int, shards: int, state: dict[str, Any] | None, out: Any) -> None:
    from datasets.distributed import split_dataset_by_node
    from tokenizers import Tokenizer

    from .filters import FilterChain
    from .transforms import Augmenter

    source = plan.sources[name]
    data = split_dataset_by_node(dataset, rank=shard, world_size=shards) if shards > 1 else dataset
    epoch, documents = (int(state["epoch"]), int(state["documents"])) if state else (0, 0)
    data.set_epoch(epoch)
    if state:
        data.load_state_dict(state["dataset"])
    tokenizer = Tokenizer.from_str(plan.tokenizer_json)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    chain = FilterChain(list(plan.filters))
    augmenter = Augmenter(plan.transforms, plan.seed, list(plan.all_sources)) if plan.transforms else None
    records, kept_this_epoch, eos = iter(data), 0, [plan.eos_id]
    while True:
        texts: list[str] = []
        characters = 0
        while characters < CHUNK_CHARS:
            record = next(records, None)
            if record is None:  # the end of the shard: the next epoch starts from its front, in the next chunk
                if kept_this_epoch == 0:
                    raise DataError(f"stream shard {shard} of {shards} holds no document the filters keep "
                                    "(fewer documents or files than ranks x data.stream_workers?)", source=name)
                epoch, kept_this_epoch = epoch + 1, 0
                data.set_epoch(epoch)
                records = iter(data)
                if texts:
                    break
                continue
            text = record.get(source.text_field)
            documents += 1
            if not isinstance(text, str):
                raise DataError(f"record {documents} of stream shard {shard} of {shards} has no text in field "
                                f"{source.text_field!r} (fields: {', '.join(sorted(record))})", source=name,
                                path=("data", "sources", name, "text_field"))
            if not chain.keep(name, text):
                continue
            if augmenter is not None:  # numbered across shards: each document its own draw
                text = augmenter.apply(name, (documents - 1) * shards + shard, text)
            texts.append(text)
            kept_this_epoch += 1
            characters += len(text)
        ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
        tokens = np.concatenate([np.asarray(row + eos, dtype=np.uint32) for row in ids])
        out.put((tokens, {"epoch": epoch, "documents": documents, "dataset": data.state_dict()}))
