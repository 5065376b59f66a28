"""Streaming local jsonl through `datasets`: disjoint shards by rank, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from data_helpers import write_jsonl
from tabula.runtime.data.streaming import TokenStream, local_stream, shard_of

EOS = 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    texts = [f"doc{i} " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + i % 5)) for i in range(48)]
    files = [write_jsonl(root / f"part{k}.jsonl", texts[k * 12 : (k + 1) * 12]) for k in range(4)]
    words = sorted({word for text in texts for word in text.split()})
    vocab = {"<eos>": EOS, "<unk>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return files, texts, tokenizer


def _documents(stream, tokenizer, windows, seq_len=8):
    ids = np.concatenate([stream.next_window(seq_len)[:-1] for _ in range(windows)])
    return {tokenizer.id_to_token(int(i)) for i in ids if tokenizer.id_to_token(int(i)).startswith("doc")}


def test_two_ranks_read_disjoint_documents_that_cover_the_source(corpus):
    files, texts, tokenizer = corpus
    seen = []
    for rank in range(2):
        shard, shards = shard_of(rank, 2)
        stream = TokenStream(local_stream(files, "jsonl"), tokenizer, EOS, shard=shard, shards=shards)
        seen.append(_documents(stream, tokenizer, 20))  # 160 tokens: about one epoch of this rank's 24 documents
        assert stream.epoch == 0
    assert seen[0].isdisjoint(seen[1]) and len(seen[0]) >= 18 and len(seen[1]) >= 18
    assert seen[0] | seen[1] <= {text.split()[0] for text in texts}
    with pytest.raises(ValueError):
        shard_of(2, 2)


def test_a_restored_stream_continues_at_the_same_token(corpus):
    files, _, tokenizer = corpus
    stream = TokenStream(local_stream(files, "jsonl"), tokenizer, EOS, shard=1, shards=2)
    for _ in range(7):
        stream.next_window(8)
    state = json.loads(json.dumps(stream.state_dict()))
    expected = [stream.next_window(8) for _ in range(30)]  # runs past the end of the epoch
    assert stream.epoch >= 1
    restored = TokenStream(local_stream(files, "jsonl"), tokenizer, EOS, shard=1, shards=2)
    restored.load_state_dict(state)
    assert all(np.array_equal(restored.next_window(8), window) for window in expected)
    assert restored.documents == stream.documents
    with pytest.raises(ValueError, match="shard 1 of 2"):
        TokenStream(local_stream(files, "jsonl"), tokenizer, EOS, shard=0, shards=2).load_state_dict(state)
