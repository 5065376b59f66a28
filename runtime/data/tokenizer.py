"""The tokenizer: trained (bpe, unigram) on a sample of the corpus, or loaded (file, hub, tiktoken).

Two registries map each `data.tokenizer.kind` to its builder: TRAINERS (bpe, unigram) and LOADERS
(file, hub, tiktoken). Every tokenizer carries the spec's
end-of-document and padding tokens as special tokens; its hash is the SHA-256 of its JSON with
keys sorted, so the same corpus, sample and seed give the same hash on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tabula.schemas.data import BPETokenizer, FileTokenizer, HubTokenizer, TiktokenTokenizer, UnigramTokenizer
from tabula.schemas.registry import Registry

from .errors import DataError

WHERE = ("data", "tokenizer")
# kind -> (tokenizer spec, sample of texts, characters in the sample, more special tokens) -> trained tokenizer
TRAINERS: Registry[Callable[[Any, Iterable[str], int, Sequence[str]], Tokenizer]] = Registry("tokenizer trainer")
# kind -> (tokenizer spec, the spec's folder) -> loaded tokenizer
LOADERS: Registry[Callable[[Any, Path], Tokenizer]] = Registry("tokenizer loader")


@TRAINERS.register("bpe")
def train_bpe(spec: BPETokenizer, sample: Iterable[str], sample_chars: int, more_specials: Sequence[str] = ()) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, show_progress=False,
        special_tokens=_specials(spec, more_specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(sample, trainer)
    return _check_size(spec, tokenizer, sample_chars)


@TRAINERS.register("unigram")
def train_unigram(spec: UnigramTokenizer, sample: Iterable[str], sample_chars: int, more_specials: Sequence[str] = ()) -> Tokenizer:
    # Byte-level pre-tokenization: every input maps to the 256 byte symbols, so nothing is unknown.
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.UnigramTrainer(
        vocab_size=spec.vocab_size, show_progress=False, special_tokens=_specials(spec, more_specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_piece_length=16,
    )
    tokenizer.train_from_iterator(sample, trainer)
    # The trainer sums scores in a varying order, so they differ in the last bits from run to
    # run: rounded and re-sorted (special tokens first) they give the same tokenizer every time.
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    specials = set(_specials(spec, more_specials))
    head = [(piece, 0.0) for piece, _ in vocab if piece in specials]
    rest = sorted(((piece, round(score, 6)) for piece, score in vocab if piece not in specials), key=lambda p: (-p[1], p[0]))
    # Unseen alphabet symbols get scores 1e-4 apart in a varying order: those get them by name.
    lowest = rest[-1][1]
    tail = next(i for i, (_, score) in enumerate(rest) if score <= lowest + 1e-4 * 257)
    rest[tail:] = zip(sorted(piece for piece, _ in rest[tail:]), [score for _, score in rest[tail:]])
    tokenizer.model = models.Unigram(head + rest, None, False)
    return _check_size(spec, tokenizer, sample_chars)


@LOADERS.register("file")
def load_file(spec: FileTokenizer, base_dir: Path) -> Tokenizer:
    path = file_path(spec, base_dir)
    try:
        return _with_specials(spec, Tokenizer.from_file(str(path)))
    except Exception as error:
        raise DataError(f"{path} is not a tokenizer.json file: {_first_line(error)}", path=(*WHERE, "path")) from None


@LOADERS.register("hub")
def load_hub(spec: HubTokenizer, base_dir: Path) -> Tokenizer:
    try:
        return _with_specials(spec, Tokenizer.from_pretrained(spec.name, revision=spec.revision or "main"))
    except Exception as error:
        raise DataError(
            f"cannot load tokenizer {spec.name!r} from the hub (it needs the network, or a local copy: kind: file): {_first_line(error)}",
            path=(*WHERE, "name"),
        ) from None


@LOADERS.register("tiktoken")
def load_tiktoken(spec: TiktokenTokenizer, base_dir: Path) -> Tokenizer:
    """A tiktoken encoding converted to the tokenizers format (tiktoken_encoding.py): its file from
    `spec.path` or tiktoken's cache, never downloaded."""
    from .tiktoken_encoding import load_encoding, to_tokenizer

    path = None if spec.path is None else Path(spec.path) if os.path.isabs(spec.path) else base_dir / spec.path
    return _with_specials(spec, to_tokenizer(load_encoding(spec.encoding, path)))


def file_path(spec: FileTokenizer, base_dir: Path) -> Path:
    path = Path(spec.path) if os.path.isabs(spec.path) else base_dir / spec.path
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}", path=(*WHERE, "path"))
    return path


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """SHA-256 hex of the tokenizer's JSON, keys sorted (stable across processes and machines)."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def special_ids(spec: Any, tokenizer: Tokenizer) -> tuple[int, int]:
    """(eos_id, pad_id) of the spec's special tokens in `tokenizer`."""
    eos, pad = tokenizer.token_to_id(spec.eos_token), tokenizer.token_to_id(spec.pad_token)
    if eos is None or pad is None:
        raise DataError(f"the tokenizer lacks the special tokens {spec.eos_token!r} / {spec.pad_token!r}", path=WHERE)
    return eos, pad


def _specials(spec: Any, more: Sequence[str] = ()) -> list[str]:
    """The spec's end-of-document and padding tokens, then `more` (a chat template's), each once, in order."""
    return list(dict.fromkeys([spec.eos_token, spec.pad_token, *more]))


def _with_specials(spec: Any, tokenizer: Tokenizer) -> Tokenizer:
    missing = [token for token in _specials(spec) if tokenizer.token_to_id(token) is None]
    if missing:  # e.g. GPT-2's tokenizer has no padding token: it is appended to the vocabulary
        tokenizer.add_special_tokens(missing)
    return tokenizer


def _check_size(spec: Any, tokenizer: Tokenizer, sample_chars: int) -> Tokenizer:
    size = tokenizer.get_vocab_size()
    if size < spec.vocab_size:
        raise DataError(
            f"the training sample ({sample_chars} characters) supports only {size} tokens, fewer than vocab_size {spec.vocab_size}: "
            f"lower vocab_size or min_frequency, or train on more text (max_chars, more sources)",
            path=(*WHERE, "vocab_size"),
        )
    return tokenizer


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
