"""kind: tiktoken without downloads and without transformers: an encoding built here (its ranks from
a small BPE trained in this file, served as a .tiktoken file), converted to the tokenizers format,
gives tiktoken's ids; a missing encoding file is one line that says where to get it."""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

tiktoken = pytest.importorskip("tiktoken")
import tiktoken.registry  # noqa: E402

from tabula.runtime.data import DataError, prepare  # noqa: E402
from tabula.runtime.data.tiktoken_encoding import load_encoding, to_tokenizer  # noqa: E402
from tabula.schemas.loader import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TABULAPRIMA = ROOT / "specs" / "tabulaprima-278m.yaml"
CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
NAME = "tabula_test_base"
URL = f"https://tabula.invalid/encodings/{NAME}.tiktoken"

TEXTS = [
    "The river carries stone and light; the garden keeps its windows open. Don't they'll we've?\n\n",
    "def train(model, data):\n    for step in range(1000):\n        loss = model(data[step % 17])  # 12345678\r\n",
    "Café, naïve, résumé — “quotes” and ‘single’ ones, 😀 emoji, 東京, Ελληνικά, tabs\tand   spaces   \n",
]


def train_ranks(text: str, merges: int) -> dict[bytes, int]:
    """A byte-level BPE in plain Python: the 256 bytes, then the most frequent adjacent pair merged
    `merges` times (within words split at spaces), each new token ranked after the ones before it."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in word.encode()] for word in text.split(" ") if word]
    for _ in range(merges):
        counts = collections.Counter(a + b for word in words for a, b in zip(word, word[1:]))
        best = max((pair for pair in counts if pair not in ranks), key=lambda pair: (counts[pair], pair), default=None)
        if best is None:
            break
        ranks[best] = len(ranks)
        for word in words:
            i = 0
            while i < len(word) - 1:
                if word[i] + word[i + 1] == best:
                    word[i:i + 2] = [best]
                i += 1
    return ranks


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return train_ranks(" ".join(TEXTS * 3), 200)


def encoding_of(ranks: dict[bytes, int], name: str = NAME):
    n = len(ranks)  # specials with a gap between them, as cl100k_base has
    return tiktoken.Encoding(name, pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": n, "<|fim_prefix|>": n + 3})


def test_the_converted_tokenizer_gives_tiktokens_ids(ranks):
    encoding = encoding_of(ranks)
    tokenizer = to_tokenizer(encoding)
    assert tokenizer.get_vocab_size() == encoding.n_vocab == len(ranks) + 4  # dense: the gap is filled
    assert tokenizer.token_to_id("<|endoftext|>") == encoding.eot_token
    assert tokenizer.token_to_id("<|fim_prefix|>") == len(ranks) + 3
    for text in [*TEXTS, "".join(TEXTS), "  leading spaces and trailing   ", "", "x"]:
        ids = encoding.encode_ordinary(text)
        assert tokenizer.encode(text).ids == ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("end<|endoftext|>").ids == encoding.encode("end<|endoftext|>", allowed_special="all")


@pytest.fixture
def registered(ranks, tmp_path, monkeypatch):
    """NAME as tiktoken knows cl100k_base: a constructor that asks for its file at an address, with
    its SHA-256. Returns the local copy of that file; tiktoken's cache is empty."""
    lines = b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in sorted(ranks.items(), key=lambda item: item[1]))
    local = tmp_path / f"{NAME}.tiktoken"
    local.write_bytes(lines)

    def constructor():
        loaded = tiktoken.load.load_tiktoken_bpe(URL, expected_hash=hashlib.sha256(lines).hexdigest())
        return {"name": NAME, "pat_str": CL100K_PATTERN, "mergeable_ranks": loaded,
                "special_tokens": {"<|endoftext|>": len(loaded), "<|fim_prefix|>": len(loaded) + 3}}

    tiktoken.registry._find_constructors()
    monkeypatch.setitem(tiktoken.registry.ENCODING_CONSTRUCTORS, NAME, constructor)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # tiktoken keeps encodings by name
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    return local


def test_missing_file_says_where_to_get_it_and_a_local_copy_or_the_cache_serves_it(registered, tmp_path, ranks):
    with pytest.raises(DataError) as raised:
        load_encoding(NAME, None)
    message = str(raised.value)
    assert message.startswith("data.tokenizer.path: ") and "\n" not in message
    cache_file = tmp_path / "tiktoken-cache" / hashlib.sha1(URL.encode()).hexdigest()
    assert URL in message and str(cache_file) in message
    assert load_encoding(NAME, registered).encode_ordinary(TEXTS[0]) == encoding_of(ranks).encode_ordinary(TEXTS[0])
    tiktoken.registry.ENCODINGS.clear()
    assert cache_file.is_file()  # tiktoken cached the checked copy: from now on no path is needed
    assert load_encoding(NAME, None).n_vocab == len(ranks) + 4


def test_a_file_that_is_not_the_encodings_is_refused(registered, tmp_path):
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(registered.read_bytes().replace(b" 7\n", b" 8\n", 1))
    with pytest.raises(DataError, match="is not the tabula_test_base encoding's file"):
        load_encoding(NAME, wrong)
    with pytest.raises(DataError, match="no such file"):
        load_encoding(NAME, tmp_path / "absent.tiktoken")
    with pytest.raises(DataError, match="unknown tiktoken encoding 'nope'"):
        load_encoding("nope", None)


def test_prepare_the_tabulaprima_spec_offline_with_a_local_source(registered, tmp_path, tabula_cache, ranks):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, text in enumerate(TEXTS * 4):
        (corpus / f"doc{index}.txt").write_text(f"{index}: {text}")
    spec = load_spec(TABULAPRIMA, [
        f"data.sources={{local: {{kind: files, paths: ['{corpus}/*.txt']}}}}",
        "data.curriculum=[{seq_len: 512, mix: {local: 1.0}}]",
        "data.validation={max_documents: 2}",
        f"data.tokenizer.encoding={NAME}",
        f"data.tokenizer.path={registered}",
    ])
    prepared = prepare(spec)
    encoding = encoding_of(ranks)
    assert prepared.vocab_size == encoding.n_vocab and prepared.eos_id == encoding.eot_token
    assert prepared.tokenizer.encode(TEXTS[2]).ids == encoding.encode_ordinary(TEXTS[2])
    assert sum(shard.n_documents for split in (prepared.train, prepared.val) for shard in split.values()) == 12


def test_tabula_prepare_without_the_encoding_file_is_one_line_and_exit_2(tmp_path):
    # the shipped spec as it is (cl100k_base), a local source instead of the hub, an empty tiktoken cache
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(TEXTS[0] * 20)
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken-cache"), "TABULA_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tabula"), "prepare", str(TABULAPRIMA),
         f"data.sources={{local: {{kind: files, paths: ['{tmp_path}/corpus/*.txt']}}}}",
         "data.curriculum=[{seq_len: 512, mix: {local: 1.0}}]"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "data.tokenizer.path" in errors[0]
    assert "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken" in errors[0]
