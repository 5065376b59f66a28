"""What a tokenizer worker process runs: it opens the spool itself and sends back token arrays,
so only offsets and finished tokens cross the process boundary. Imports numpy and tokenizers only."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

import numpy as np

_worker: dict = {}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a worker process: end quietly when the main process dies (kill -9, the OOM killer)
    instead of finishing its task and printing a broken-pipe traceback. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def start(tokenizer_json: str, eos_id: int, dtype: str, in_worker: bool = True) -> None:
    """Initialise this process's tokenizer; in a worker process single-threaded (the parallelism
    is the processes), in the main process (in_worker=False) left to use its own threads."""
    if in_worker:
        die_with_parent()
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker.update(tokenizer=Tokenizer.from_str(tokenizer_json), eos_id=eos_id, dtype=np.dtype(dtype))


def encode_chunk(path: str, start: int, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize the documents of spool `path` between `start` and `start + ends[-1]`:
    returns (tokens with the end-of-document id after each document, tokens per document)."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(int(ends[-1]))
    bounds = [0, *ends.tolist()]
    texts = [data[bounds[i] : bounds[i + 1]].decode("utf-8") for i in range(len(ends))]
    tokenizer = _worker["tokenizer"]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast: no character offsets
    ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    eos = [_worker["eos_id"]]
    tokens = np.concatenate([np.asarray(row + eos, dtype=_worker["dtype"]) for row in ids])
    lengths = np.fromiter((len(row) + 1 for row in ids), dtype=np.uint64, count=len(ids))
    return tokens, lengths


def encode_chat_chunk(path: str, start: int, ends: np.ndarray, max_tokens: int | None, truncation: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Tokenize the rendered conversations (each a JSON object `{"text", "spans"}`) of spool `path`
    between `start` and `start + ends[-1]`: returns (tokens, tokens per conversation, loss mask,
    conversations cut to max_tokens, conversations dropped with no trained token left)."""
    from .loss_mask import fit, trained_mask

    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(int(ends[-1]))
    bounds = [0, *ends.tolist()]
    records = [json.loads(data[bounds[i] : bounds[i + 1]]) for i in range(len(ends))]
    tokenizer, eos_id, dtype = _worker["tokenizer"], _worker["eos_id"], _worker["dtype"]
    encodings = tokenizer.encode_batch([record["text"] for record in records], add_special_tokens=False)
    tokens, masks, lengths = [], [], []
    cut = dropped = 0
    for record, encoding in zip(records, encodings):
        fitted = fit(encoding.ids, trained_mask(encoding.offsets, record["spans"]), eos_id, max_tokens, truncation)
        if fitted is None:
            dropped += 1
            continue
        ids, mask, was_cut = fitted
        tokens.append(ids.astype(dtype))
        masks.append(mask)
        lengths.append(len(ids))
        cut += was_cut
    if not tokens:
        return np.zeros(0, dtype), np.zeros(0, np.uint64), np.zeros(0, np.uint8), cut, dropped
    return np.concatenate(tokens), np.asarray(lengths, dtype=np.uint64), np.concatenate(masks), cut, dropped
