"""tiktoken encodings (cl100k_base, o200k_base, ...) as `tokenizers.Tokenizer`s: offline, and
without transformers.

Loading. tiktoken's own constructor for the named encoding gives its split pattern, its special
tokens and the address and SHA-256 of its ranks file. It runs with tiktoken's remote reads
(`tiktoken.load.read_file`, which would fetch the file with no timeout) served here: from the
spec's `path` when it gives one, else nothing, so that only tiktoken's cache can answer
($TIKTOKEN_CACHE_DIR, else <tmp>/data-gym-cache, the file named by the SHA-1 of its address).
tabula downloads nothing; a missing file is a DataError that says where to get it. tiktoken
checks the file's SHA-256 either way.

Converting. A byte-level BPE: the mergeable ranks are the vocabulary (bytes written in GPT-2's
byte-to-character alphabet, as tokenizers' ByteLevel pre-tokenizer does), and each token's merge is
recovered by running BPE over its bytes with the ranks below its own (the last step leaves two
parts: the merge). Special tokens keep their tiktoken ids; the ids an encoding leaves unused between
them (cl100k_base has 16) are filled with `<|reserved_N|>` tokens, so the vocabulary is dense and its
size is tiktoken's `n_vocab`, the size the plan counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .errors import DataError

WHERE = ("data", "tokenizer")
_PATCH_LOCK = threading.Lock()


def load_encoding(name: str, path: Path | None) -> Any:
    """The tiktoken `Encoding` called `name`, its file read from `path` (a local copy) or from
    tiktoken's cache; raises DataError (one line) when neither has it, or it is not that file."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        raise DataError("kind: tiktoken needs the tiktoken package (pip install tiktoken)", path=(*WHERE, "kind")) from None
    if name not in tiktoken.list_encoding_names():
        raise DataError(f"unknown tiktoken encoding {name!r}; known: {', '.join(tiktoken.list_encoding_names())}",
                        path=(*WHERE, "encoding"))
    if path is not None and not path.is_file():
        raise DataError(f"{path}: no such file (the {name} encoding's file)", path=(*WHERE, "path"))
    wanted: list[str] = []
    try:
        with _served_locally(tiktoken.load, path, wanted):
            return tiktoken.get_encoding(name)
    except _NotHere:
        raise DataError(_where_to_get_it(name, wanted), path=(*WHERE, "path")) from None
    except ValueError as error:  # tiktoken: the file's SHA-256 is not the encoding's
        if "hash" not in str(error).lower():
            raise
        raise DataError(f"{path} is not the {name} encoding's file (its SHA-256 differs from tiktoken's; download it again from "
                        f"{wanted[0] if wanted else 'where tiktoken names it'})", path=(*WHERE, "path")) from None


def to_tokenizer(encoding: Any) -> Tokenizer:
    """`encoding` (a tiktoken.Encoding) as a byte-level BPE `Tokenizer` that gives the same ids for
    any text (specials excepted: tiktoken refuses them in text by default; here they are tokens)."""
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    alphabet = byte_alphabet()

    def chars(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {chars(token): rank for token, rank in ranks.items()}
    merges = [(chars(left), chars(right)) for left, right in _merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(encoding._pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    # Added tokens take the next free id in turn: specials and the unused ids between them, in id order.
    if set(ranks.values()) != set(range(len(ranks))):
        raise ValueError(f"tiktoken encoding {encoding.name}: its ranks are not 0 .. {len(ranks) - 1}")
    specials = {token_id: text for text, token_id in encoding._special_tokens.items()}
    for token_id in range(len(ranks), encoding.n_vocab):
        text = specials.get(token_id, f"<|reserved_{token_id}|>")
        tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if tokenizer.token_to_id(text) != token_id:
            raise ValueError(f"tiktoken encoding {encoding.name}: special token {text!r} got id {tokenizer.token_to_id(text)}, not {token_id}")
    return tokenizer


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map (printable bytes as themselves, the rest shifted past 255),
    the one tokenizers' ByteLevel pre-tokenizer applies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Each multi-byte token's merge, in rank order: BPE over its bytes using only lower ranks ends
    with two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < rank and (best is None or pair_rank < best[0]):
                    best = (pair_rank, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


class _NotHere(Exception):
    """tiktoken asked for a remote file that is neither given nor cached."""


@contextlib.contextmanager
def _served_locally(load_module: Any, path: Path | None, wanted: list[str]) -> Iterator[None]:
    """tiktoken's remote reads answered from `path` (or refused) while the block runs; the addresses
    asked for are appended to `wanted`."""

    def read_file(blobpath: str) -> bytes:
        wanted.append(blobpath)
        if "://" not in blobpath:  # a local path: tiktoken's own reader
            return original(blobpath)
        if path is None or len(set(wanted)) > 1:  # an encoding of two files (gpt2) cannot come from one path
            raise _NotHere(blobpath)
        return path.read_bytes()

    with _PATCH_LOCK:
        original = load_module.read_file
        load_module.read_file = read_file
        try:
            yield
        finally:
            load_module.read_file = original


def _where_to_get_it(name: str, wanted: list[str]) -> str:
    if len(set(wanted)) > 1:
        return f"tiktoken encoding {name} is made of several files ({', '.join(wanted)}); use r50k_base (the same tokens) with path"
    url = wanted[0] if wanted else "(tiktoken names no file)"
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    key = hashlib.sha1(url.encode()).hexdigest()
    return (f"tiktoken encoding {name}: its file is not here and tabula downloads none: download {url} and set "
            f"data.tokenizer.path to it (or save it as {Path(cache) / key}, tiktoken's cache)")
