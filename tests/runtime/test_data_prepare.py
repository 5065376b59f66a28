"""prepare(): filters, validation split, tokenizer, token cache, and bad input as DataErrors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_helpers import document, documents_of, make_spec, write_jsonl, write_texts

from tabula.runtime.data import DataError, prepare, save_tokenizer
from tabula.runtime.data import pipeline, shards


@pytest.fixture
def corpus(tmp_path):
    """12 distinct documents, 3 exact copies of them, 4 short ones: 19 files."""
    rng = np.random.default_rng(0)
    unique = [document(rng) for _ in range(12)]
    texts = unique + unique[:3] + ["short one", "tiny", "too short", "no"]
    return write_texts(tmp_path / "corpus", texts), unique


def files_spec(folder, **data):
    return make_spec({"sources": {"corpus": {"kind": "files", "paths": [str(folder / "*.txt")]}}, **data})


def test_filters_count_planted_duplicates_and_short_documents(corpus, tabula_cache):
    folder, unique = corpus
    spec = files_spec(folder, filters=[{"kind": "length", "min_chars": 20}, {"kind": "dedup", "method": "exact"}],
                      validation={"fraction": 0})
    prepared = prepare(spec)
    source = prepared.report["sources"]["corpus"]
    assert source["documents"] == 19
    assert [(f["kind"], f["in"], f["out"]) for f in source["filters"]] == [("length", 19, 15), ("dedup", 15, 12)]
    assert source["train"]["documents"] == 12 and source["val"]["documents"] == 0
    assert sorted(documents_of(prepared.train["corpus"], prepared.tokenizer, prepared.eos_id)) == sorted(unique)


def test_regex_quality_and_minhash_filters(tmp_path, tabula_cache):
    rng = np.random.default_rng(1)
    base = [document(rng, 80) for _ in range(6)]
    near = [text.replace("the", "a", 1) for text in base[:2]]  # one word differs: near duplicates
    texts = base + near + ["SECRET " + document(rng), "1234 5678 9012 3456 7890 " * 8]
    folder = write_texts(tmp_path / "c", texts)
    spec = files_spec(folder, validation={"fraction": 0}, filters=[
        {"kind": "regex", "pattern": "SECRET", "action": "drop"},
        {"kind": "quality"},
        {"kind": "dedup", "method": "minhash", "threshold": 0.7},
    ])
    counts = [(f["in"], f["out"]) for f in prepare(spec).report["sources"]["corpus"]["filters"]]
    assert counts == [(10, 9), (9, 8), (8, 6)]


def test_a_filter_that_drops_everything_is_named(corpus, tabula_cache):
    folder, _ = corpus
    spec = files_spec(folder, filters=[{"kind": "length", "min_chars": 10}, {"kind": "regex", "pattern": "zzz", "action": "keep"}])
    with pytest.raises(DataError) as error:
        prepare(spec)
    assert error.value.path == ("data", "filters", 1) and "regex" in str(error.value)
    assert not [p for p in tabula_cache.iterdir() if p.is_dir()]  # nothing half-written


def test_validation_is_held_out_and_never_in_training(tmp_path, tabula_cache):
    rng = np.random.default_rng(2)
    folder = write_texts(tmp_path / "c", [document(rng) for _ in range(100)])
    prepared = prepare(files_spec(folder, validation={"fraction": "10%"}))
    train = set(documents_of(prepared.train["corpus"], prepared.tokenizer, prepared.eos_id))
    val = set(documents_of(prepared.val["corpus"], prepared.tokenizer, prepared.eos_id))
    assert len(val) == 10 and len(train) == 90 and not train & val
    capped = prepare(files_spec(folder, validation={"fraction": "10%", "max_documents": 3}))
    assert capped.val["corpus"].n_documents == 3 and capped.train["corpus"].n_documents == 97
    assert capped.fingerprint != prepared.fingerprint


def test_tokenizer_training_is_deterministic(tmp_path, corpus):
    folder, _ = corpus
    for kind in ("bpe", "unigram"):
        tokenizer = {"kind": kind, "vocab_size": 280, "min_frequency": 1, "max_chars": 3000}
        a = prepare(files_spec(folder, tokenizer=tokenizer), cache_dir=tmp_path / f"a-{kind}")
        b = prepare(files_spec(folder, tokenizer=tokenizer), cache_dir=tmp_path / f"b-{kind}")
        assert a.tokenizer_hash == b.tokenizer_hash and a.tokenizer_json == b.tokenizer_json
        assert a.vocab_size == 280 and (a.eos_id, a.pad_id) == (0, 1)
        assert a.train["corpus"].dtype == "uint16"
    other_seed = prepare(make_spec(files_spec(folder).model_dump()["data"] | {"tokenizer": tokenizer}, seed=8), cache_dir=tmp_path / "c")
    assert other_seed.fingerprint != a.fingerprint


def test_a_vocabulary_larger_than_the_corpus_supports(corpus, tabula_cache):
    folder, _ = corpus
    with pytest.raises(DataError) as error:
        prepare(files_spec(folder, tokenizer={"kind": "bpe", "vocab_size": 50000}))
    assert error.value.path == ("data", "tokenizer", "vocab_size") and "supports only" in str(error.value)


def test_file_tokenizer_is_relative_to_the_spec_folder(corpus, tmp_path, tabula_cache, monkeypatch):
    folder, _ = corpus
    trained = prepare(files_spec(folder))
    (tmp_path / "tok.json").write_text(trained.tokenizer_json)
    monkeypatch.chdir(tmp_path)
    loaded = prepare(files_spec(folder, tokenizer={"kind": "file", "path": "tok.json"}))
    assert loaded.tokenizer_hash == trained.tokenizer_hash
    assert np.array_equal(loaded.train["corpus"].tokens, trained.train["corpus"].tokens)
    with pytest.raises(DataError, match="tokenizer file not found"):
        prepare(files_spec(folder, tokenizer={"kind": "file", "path": "missing.json"}))


def test_cache_is_reused_and_keyed_by_contents(corpus, tabula_cache):
    folder, _ = corpus
    first = prepare(files_spec(folder))
    second = prepare(files_spec(folder))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.fingerprint == first.fingerprint and second.report["cache"] == "hit"
    assert second.report["sources"] == first.report["sources"]
    (folder / "doc0000.txt").write_text(document(np.random.default_rng(9)))
    assert prepare(files_spec(folder)).fingerprint != first.fingerprint


def test_an_interrupted_prepare_leaves_no_complete_looking_entry(corpus, tabula_cache, monkeypatch):
    folder, _ = corpus
    real_add = shards.ShardWriter.add

    def crash(self, tokens, lengths):
        real_add(self, tokens, lengths)
        raise KeyboardInterrupt

    monkeypatch.setattr(shards.ShardWriter, "add", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(files_spec(folder))
    assert list(tabula_cache.glob("*/meta.json")) == [] and list(tabula_cache.glob(".tmp-*")) == []
    # A temporary entry left by a killed process (a pid that no longer runs) is swept away.
    stale = tabula_cache / ".tmp-0123-999999999-abcd"
    stale.mkdir()
    (stale / "train-corpus.tokens").write_bytes(b"\0\0")
    monkeypatch.setattr(shards.ShardWriter, "add", real_add)
    prepared = prepare(files_spec(folder))
    assert not stale.exists() and not prepared.cache_hit
    assert (prepared.directory / "meta.json").is_file()


def test_parallel_workers_give_the_same_shards(corpus, tabula_cache, monkeypatch):
    folder, _ = corpus
    inline = prepare(files_spec(folder, workers=1), cache_dir=tabula_cache / "one")
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 700)  # several chunks for two workers
    parallel = prepare(files_spec(folder, workers=2), cache_dir=tabula_cache / "two")
    assert np.array_equal(inline.train["corpus"].tokens, parallel.train["corpus"].tokens)
    assert np.array_equal(inline.train["corpus"].document_ends, parallel.train["corpus"].document_ends)


def test_jsonl_records_malformed_lines_and_missing_fields(tmp_path, tabula_cache):
    rng = np.random.default_rng(3)
    path = write_jsonl(tmp_path / "d.jsonl", [document(rng) for _ in range(6)])
    lines = path.read_text().splitlines()
    lines[2] = '{"text": "broken'
    lines[4] = '{"text": "a lone surrogate \\ud800 is legal JSON ' + document(rng) + '"}'
    path.write_text("\n".join(lines) + "\n")
    source = {"kind": "files", "paths": [str(path)], "format": "jsonl"}
    with pytest.raises(DataError) as error:
        prepare(make_spec({"sources": {"web": source}}))
    assert f"{path}:3" in str(error.value) and error.value.source == "web"
    prepared = prepare(make_spec({"sources": {"web": {**source, "on_error": "skip"}}, "validation": {"fraction": 0}}))
    assert prepared.report["sources"]["web"]["documents"] == 5
    assert any(f"{path}:3" in w for w in prepared.report["warnings"])
    with pytest.raises(DataError) as error:
        prepare(make_spec({"sources": {"web": {**source, "text_field": "body"}}}))
    assert "no field 'body'" in str(error.value)


def test_parquet_source_and_its_missing_column(tmp_path, tabula_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    texts = [document(rng) for _ in range(20)]
    pq.write_table(pa.table({"content": texts}), tmp_path / "d.parquet")
    source = {"kind": "files", "paths": [str(tmp_path / "*.parquet")], "format": "parquet", "text_field": "content"}
    prepared = prepare(make_spec({"sources": {"pq": source}, "validation": {"fraction": 0}}))
    assert sorted(documents_of(prepared.train["pq"], prepared.tokenizer, prepared.eos_id)) == sorted(texts)
    with pytest.raises(DataError, match="no column 'text'"):
        prepare(make_spec({"sources": {"pq": {**source, "text_field": "text"}}}))
    (tmp_path / "e.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="e.parquet: not a readable parquet file"):
        prepare(make_spec({"sources": {"pq": source}}))
    skipped = prepare(make_spec({"sources": {"pq": {**source, "on_error": "skip"}}, "validation": {"fraction": 0}}))
    assert skipped.train["pq"].n_documents == 20 and "e.parquet" in skipped.report["warnings"][0]


def test_missing_files_and_empty_globs(tmp_path, tabula_cache):
    with pytest.raises(DataError) as error:
        prepare(make_spec({"sources": {"c": {"kind": "files", "paths": [str(tmp_path / "nothing" / "*.txt")]}}}))
    assert error.value.path == ("data", "sources", "c", "paths", 0) and "matches no files" in str(error.value)
    with pytest.raises(DataError, match="file not found"):
        prepare(make_spec({"sources": {"c": {"kind": "files", "paths": [str(tmp_path / "absent.txt")]}}}))
    with pytest.raises(DataError, match=r"is a folder: match its files with a pattern such as '.*/\*\*/\*.txt'"):
        prepare(make_spec({"sources": {"c": {"kind": "files", "paths": [str(tmp_path)]}}}))
    (tmp_path / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 40)
    with pytest.raises(DataError, match="UTF-8"):
        prepare(make_spec({"sources": {"c": {"kind": "files", "paths": [str(tmp_path / "latin.txt")]}}}))


def test_python_stdlib_source_is_sorted_and_deterministic(tmp_path, tabula_cache):
    spec = make_spec({"sources": {"std": {"kind": "python_stdlib", "max_files": 6}}, "validation": {"fraction": 0},
                      "tokenizer": {"kind": "bpe", "vocab_size": 400, "max_chars": 20000}})
    first, second = prepare(spec, cache_dir=tmp_path / "a"), prepare(spec, cache_dir=tmp_path / "b")
    report = first.report["sources"]["std"]
    assert report["documents"] >= 6 and report["train"]["tokens"] > 1000
    assert first.fingerprint == second.fingerprint and first.tokenizer_hash == second.tokenizer_hash
    only_source = make_spec({"sources": {"std": {"kind": "python_stdlib", "max_files": 6, "include": ["source"]}}})
    assert prepare(only_source).report["sources"]["std"]["documents"] == 6


def test_meta_json_records_the_report(corpus, tabula_cache):
    folder, _ = corpus
    prepared = prepare(files_spec(folder))
    meta = json.loads((prepared.directory / "meta.json").read_text())
    assert meta["fingerprint"] == prepared.fingerprint == prepared.report["fingerprint"]
    assert meta["tokenizer_hash"] == prepared.tokenizer_hash
    assert os.path.getsize(prepared.directory / "train-corpus.tokens") == 2 * prepared.train["corpus"].n_tokens


def test_a_damaged_entry_is_rebuilt_and_the_tokenizer_saved(corpus, tabula_cache, tmp_path):
    folder, _ = corpus
    first = prepare(files_spec(folder))
    tokens = np.array(first.train["corpus"].tokens)
    with open(first.directory / "train-corpus.tokens", "r+b") as handle:
        handle.truncate(10)  # a disk that lost the shard's tail
    again = prepare(files_spec(folder))
    assert not again.cache_hit and np.array_equal(np.asarray(again.train["corpus"].tokens), tokens)
    saved = save_tokenizer(again, tmp_path)
    assert saved == tmp_path / "tokenizer.json" and saved.read_text() == again.tokenizer_json


def test_a_killed_prepare_leaves_nothing_that_looks_complete(corpus, tabula_cache):
    import signal
    import subprocess
    import sys
    import time

    folder, _ = corpus
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from data_helpers import make_spec; from tabula.runtime.data import prepare;"
        "prepare(make_spec({'sources': {'corpus': {'kind': 'files', 'paths': [sys.argv[2]]}}}), cache_dir=sys.argv[3])"
    )
    child = subprocess.Popen([sys.executable, "-c", script, os.path.dirname(__file__), str(folder / "*.txt"), str(tabula_cache)])
    deadline = time.monotonic() + 60
    while not list(tabula_cache.glob(".tmp-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    if child.returncode != -signal.SIGKILL:
        pytest.skip("the child finished before it could be killed")
    assert not list(tabula_cache.glob("*/meta.json"))
    prepared = prepare(files_spec(folder))
    assert not prepared.cache_hit and not list(tabula_cache.glob(".tmp-*"))


def test_tokenizer_trains_only_on_the_named_sources(tmp_path, tabula_cache):
    rng = np.random.default_rng(6)

    def texts(letters):
        return [" ".join("".join(rng.choice(list(letters), size=4)) for _ in range(40)) for _ in range(10)]

    sources = {"a": {"kind": "files", "paths": [str(write_texts(tmp_path / "a", texts("abcdefg")) / "*.txt")]},
               "b": {"kind": "files", "paths": [str(write_texts(tmp_path / "b", texts("nopqrst")) / "*.txt")]}}
    prepared = prepare(make_spec({"sources": sources, "tokenizer": {"kind": "bpe", "vocab_size": 300, "train_on": ["b"]}}))
    learned = [piece for piece, index in prepared.tokenizer.get_vocab().items() if index >= 258]  # after 2 specials + 256 bytes
    assert learned and all(set(piece) <= set("nopqrstĠ") for piece in learned)


def test_a_cache_that_cannot_be_written_is_a_data_error(corpus, tmp_path, monkeypatch):
    import errno

    folder, _ = corpus
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    for root, words in ((in_the_way, "is not a folder"), (in_the_way / "cache", "cannot create the token cache folder")):
        with pytest.raises(DataError, match=words) as error:
            prepare(files_spec(folder), cache_dir=root)
        assert str(root) in str(error.value) and "--cache-dir" in str(error.value)
    real_add = shards.ShardWriter.add

    def disk_full(self, tokens, lengths):
        real_add(self, tokens, lengths)
        raise OSError(errno.ENOSPC, "No space left on device", self.tokens.name)

    monkeypatch.setattr(shards.ShardWriter, "add", disk_full)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot write the token cache .*No space left on device"):
        prepare(files_spec(folder), cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == []  # the temporary entry is gone too


def test_a_read_only_cache_still_serves_its_entries(corpus, tabula_cache, monkeypatch):
    from tabula.runtime.data import cache

    folder, _ = corpus
    first = prepare(files_spec(folder))
    (tabula_cache / "file-digests.json").unlink()  # digests to remember again, where nothing may be written
    def read_only(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.os, "replace", read_only)
    again = prepare(files_spec(folder))
    assert again.cache_hit and again.fingerprint == first.fingerprint


def test_an_unreadable_source_file_fails_or_is_skipped(corpus, tabula_cache, monkeypatch):
    from tabula.runtime.data import cache

    folder, _ = corpus
    real_digest = cache.FileDigests.__call__

    def no_permission(self, path):
        if path.name == "doc0001.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real_digest(self, path)

    monkeypatch.setattr(cache.FileDigests, "__call__", no_permission)
    with pytest.raises(DataError, match="doc0001.txt: cannot read: Permission denied") as error:
        prepare(files_spec(folder))
    assert error.value.source == "corpus"
    spec = make_spec({"sources": {"corpus": {"kind": "files", "paths": [str(folder / "*.txt")], "on_error": "skip"}}})
    assert prepare(spec).report["sources"]["corpus"]["documents"] == 19  # only its digest failed: read all the same


def test_a_source_with_no_documents_says_why(tmp_path, tabula_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_jsonl(tmp_path / "d.jsonl", ["some text here", "more text there"])
    source = {"kind": "files", "paths": [str(path)], "format": "jsonl", "text_field": "body", "on_error": "skip"}
    with pytest.raises(DataError) as error:
        prepare(make_spec({"sources": {"web": source}}))
    assert f"no documents (2 skipped; the first: {path}:1: no field 'body' (found: id, text))" in str(error.value)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"no documents \(1 file read, all empty: .*empty.parquet\)"):
        prepare(make_spec({"sources": {"pq": {"kind": "files", "paths": [str(tmp_path / "empty.parquet")], "format": "parquet"}}}))
    assert not [p for p in tabula_cache.iterdir() if p.is_dir()]


def test_tokenizer_hash_is_the_same_in_another_process(corpus, tmp_path):
    """Python's and Rust's hash seeds differ from process to process: the trained tokenizer must not."""
    import subprocess
    import sys

    folder, _ = corpus
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from data_helpers import make_spec; from tabula.runtime.data import prepare;"
        "tokenizer = {'kind': sys.argv[2], 'vocab_size': 280, 'min_frequency': 1};"
        "spec = make_spec({'sources': {'corpus': {'kind': 'files', 'paths': [sys.argv[3]]}}, 'tokenizer': tokenizer});"
        "print(prepare(spec, cache_dir=sys.argv[4]).tokenizer_hash)"
    )
    for kind in ("bpe", "unigram"):
        tokenizer = {"kind": kind, "vocab_size": 280, "min_frequency": 1}
        here = prepare(files_spec(folder, tokenizer=tokenizer), cache_dir=tmp_path / f"here-{kind}")
        there = subprocess.run(
            [sys.executable, "-c", script, os.path.dirname(__file__), kind, str(folder / "*.txt"), str(tmp_path / f"there-{kind}")],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True,
        )
        assert there.stdout.strip() == here.tokenizer_hash


def test_worker_processes_end_with_a_killed_prepare(tmp_path):
    """kill -9 (or the OOM killer) on prepare: its workers end too, quietly, not minutes later with a traceback."""
    import subprocess
    import sys
    import time

    script = (
        "import multiprocessing, os, time;"
        "from tabula.runtime.data.tokenize_worker import die_with_parent;"
        "pool = multiprocessing.get_context('fork').Pool(1, initializer=die_with_parent);"
        "pool.apply_async(time.sleep, (60,)); time.sleep(0.5);"
        "print(pool._pool[0].pid, flush=True); os._exit(0)"  # the parent dies without closing its pool
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    worker = int(child.stdout)

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker) and "Traceback" not in child.stderr


def test_source_names_with_dots_keep_their_own_shards(tmp_path, tabula_cache):
    rng = np.random.default_rng(8)
    english, french = [document(rng) for _ in range(5)], [document(rng, 30) for _ in range(4)]
    sources = {"web.en": {"kind": "files", "paths": [str(write_texts(tmp_path / "en", english) / "*.txt")]},
               "web.fr": {"kind": "files", "paths": [str(write_texts(tmp_path / "fr", french) / "*.txt")]}}
    spec = make_spec({"sources": sources, "validation": {"fraction": 0}})
    prepared = prepare(spec)
    assert sorted(documents_of(prepared.train["web.en"], prepared.tokenizer, prepared.eos_id)) == sorted(english)
    assert sorted(documents_of(prepared.train["web.fr"], prepared.tokenizer, prepared.eos_id)) == sorted(french)
    assert prepare(spec).cache_hit  # complete as written: the second prepare finds it
