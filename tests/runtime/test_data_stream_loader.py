"""Streamed sources (`cache: false`) end to end: the loader's worker processes shard by rank and worker,
resume exactly and never outlive it; prepare leaves the source out of the cache; two ranks' samplers read
disjoint rows of it; a run stopped at a checkpoint and resumed trains on exactly the same tokens."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from data_helpers import Stage, document, make_spec, write_jsonl
from runtime_helpers import train_in
from tabula.runtime.data.errors import DataError
from tabula.runtime.data.stream_loader import StreamedSources, StreamLoader
from tabula.runtime.data.streaming import StreamPlan, StreamSource, shard_of

EOS = 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """48 documents `docN w.. w..` in 4 jsonl files, and a word-level tokenizer over them."""
    root = tmp_path_factory.mktemp("streamed")
    texts = [f"doc{i} " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + i % 5)) for i in range(48)]
    files = tuple(str(write_jsonl(root / "web" / f"part{k}.jsonl", texts[k * 12 : (k + 1) * 12])) for k in range(4))
    words = sorted({word for text in texts for word in text.split()})
    tokenizer = Tokenizer(models.WordLevel({"<eos>": EOS, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return root, files, texts, tokenizer


def _plan(corpus, workers: int = 2) -> StreamPlan:
    _, files, _, tokenizer = corpus
    return StreamPlan({"web": StreamSource("web", "files", files=files)}, ("web",), (), (), 7, workers, tokenizer.to_str(), EOS)


def _doc_names(windows, tokenizer) -> set[str]:
    names = (tokenizer.id_to_token(int(i)) for window in windows for i in window[:-1])
    return {name for name in names if name.startswith("doc")}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as handle:  # a zombie not yet reaped by init has ended too
        return handle.read().split(")")[-1].split()[0] == "Z"


def test_two_ranks_of_two_workers_read_disjoint_documents_and_resume_exactly(corpus):
    _, _, texts, tokenizer = corpus
    plan = _plan(corpus)
    seen = []
    for rank in range(2):
        loader = StreamLoader(plan, "web", rank, 2)
        try:
            seen.append(_doc_names([loader.window(8) for _ in range(16)], tokenizer))
            pids = loader.pids
            assert len(pids) == 2
            state = json.loads(json.dumps(loader.state_dict()))
            expected = [loader.window(8) for _ in range(40)]  # past the end of the shards: the next epoch
        finally:
            loader.close()
        assert all(_gone(pid) for pid in pids)  # close ends the workers at once
        restored = StreamLoader(plan, "web", rank, 2)
        restored.load_state_dict(state)
        try:
            assert all(np.array_equal(restored.window(8), window) for window in expected)
        finally:
            restored.close()
    assert seen[0].isdisjoint(seen[1]) and len(seen[0]) >= 12 and len(seen[1]) >= 12
    with pytest.raises(DataError, match=r"saved by 2 rank\(s\) x 2 worker\(s\), and this run has 1 x 2"):
        StreamLoader(plan, "web", 0, 1).load_state_dict(state)


def _load_and_die(plan: StreamPlan, out) -> None:
    """A trainer (a forked process) that starts its loader's workers, says their ids and is killed."""
    import signal

    loader = StreamLoader(plan, "web")
    loader.window(8)
    out.send(loader.pids)
    os.kill(os.getpid(), signal.SIGKILL)


def test_shards_number_ranks_then_workers_and_refuse_what_is_out_of_range():
    assert [shard_of(rank, 2, worker, 2) for rank in range(2) for worker in range(2)] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    with pytest.raises(ValueError):
        shard_of(2, 2)


def test_the_workers_end_with_a_killed_trainer(corpus):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    trainer = context.Process(target=_load_and_die, args=(_plan(corpus), send))
    trainer.start()
    pids = receive.recv() if receive.poll(60) else []
    trainer.join(30)
    assert trainer.exitcode == -9 and len(pids) == 2
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


def _spec(root, **train):
    data = {
        "sources": {
            "local": {"kind": "files", "paths": [str(root / "local.jsonl")], "format": "jsonl"},
            "web": {"kind": "files", "paths": [str(root / "web" / "*.jsonl")], "format": "jsonl", "cache": False},
        },
        "stream_workers": 2,
        "filters": [{"kind": "length", "min_chars": 12}],
    }
    top = {"train": {"batch_tokens": 256, "optimizer": {"kind": "adamw", "lr": 1.0e-3}, "budget": {"tokens": 2048},
                     "checkpoint": {"every_tokens": 1024, "keep_last": 4}, "log": {"every_steps": 1}, **train},
           "track": {"aim": {"enabled": False}}}
    return make_spec(data, **top)


@pytest.fixture(scope="module")
def streamed(corpus, tmp_path_factory):
    from tabula.runtime.data import prepare

    root = corpus[0]
    rng = np.random.default_rng(3)
    write_jsonl(root / "local.jsonl", [document(rng) for _ in range(60)])
    spec = _spec(root)
    return spec, prepare(spec, cache_dir=tmp_path_factory.mktemp("cache"))


def test_prepare_leaves_a_streamed_source_out_of_the_cache(streamed):
    _, prepared = streamed
    assert list(prepared.train) == ["local"] and prepared.sources == ["local", "web"]
    assert prepared.streams is not None and prepared.streams.workers == 2 and len(prepared.streams.sources["web"].files) == 4
    assert prepared.report["streamed"]["web"] == {"kind": "files", "workers_per_rank": 2, "validation": "none", "files": 4}
    from tabula.commands.prepare import _summary

    assert "source web: streams (cache: false) over 4 files" in _summary({**prepared.report, "directory": "d"})


def test_two_ranks_samplers_read_disjoint_rows_of_the_stream_and_the_same_cached_rows(streamed):
    from tabula.runtime.data import Sampler

    _, prepared = streamed
    stages = [Stage(0, 0, 10**9, 16, {"local": 1.0, "web": 1.0})]
    batches, samplers = [], [Sampler(prepared, stages, 7, rank=rank, world_size=2) for rank in range(2)]
    try:
        for rank, sampler in enumerate(samplers):
            batches.append([sampler.next_batch(8, 16, range(rank * 4, rank * 4 + 4)) for _ in range(6)])
    finally:
        for sampler in samplers:
            sampler.close()
    web = [set(), set()]
    for step in range(6):
        sources = batches[0][step].sources
        assert sources == batches[1][step].sources  # every rank picks the same source for every row
        for row, name in enumerate(sources):
            rank = row // 4
            mine, other = batches[rank][step].input_ids[row], batches[1 - rank][step].input_ids[row]
            if name == "local":
                assert torch.equal(mine, other)
            else:
                assert not other.any()  # left zero: the other rank reads it
                web[rank] |= {prepared.tokenizer.decode(mine.tolist())}
    assert web[0] and web[1] and samplers[0].cursors == samplers[1].cursors


def test_a_run_stopped_at_a_checkpoint_and_resumed_trains_on_the_same_tokens(streamed, tmp_path):
    import multiprocessing

    spec, prepared = streamed
    whole, events = train_in(spec, prepared, tmp_path / "whole")
    assert whole.reason == "finished" and whole.step == 8
    losses = {e["step"]: e["loss"] for e in events if e["kind"] == "train"}
    first, _ = train_in(spec, prepared, tmp_path / "cut", max_steps=4)
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-000004"
    assert first.step == 4 and (checkpoint / "stream-rank0.json").is_file()
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("tabula-stream")]  # the loop closed them
    resumed, events = train_in(spec, prepared, tmp_path / "cut", resume_from=checkpoint)
    assert resumed.reason == "finished" and resumed.step == 8
    again = {e["step"]: e["loss"] for e in events if e["kind"] == "train"}
    assert again and all(again[step] == losses[step] for step in again)  # bit-identical: the same windows, the same updates


def test_a_hub_stream_offline_fails_in_one_line_naming_the_source(corpus):
    plan = StreamPlan({"fineweb": StreamSource("fineweb", "hub", hub={"name": "HuggingFaceFW/nonexistent-tabula-test"})},
                      ("fineweb",), (), (), 7, 1, corpus[3].to_str(), EOS)
    streams = StreamedSources(plan)
    with pytest.raises(DataError) as raised:
        streams.window("fineweb", 8)
    assert raised.value.source == "fineweb" and "cannot stream hub dataset 'HuggingFaceFW/nonexistent-tabula-test'" in str(raised.value)
    assert "\n" not in str(raised.value) and streams.pids == []


def test_a_tokenizer_over_streams_only_trains_on_their_first_documents(streamed, tmp_path):
    from tabula.runtime.data import prepare

    spec, _ = streamed
    only = spec.data.sources["local"].model_copy(update={"cache": False})
    data = spec.data.model_copy(update={"sources": {"local": only}, "curriculum": [spec.data.curriculum[0].model_copy(update={"mix": None})]})
    prepared = prepare(spec.model_copy(update={"data": data}), cache_dir=tmp_path)
    assert prepared.train == {} and prepared.sources == ["local"] and prepared.vocab_size == 300
    assert prepared.report["streamed"]["local"]["files"] == 1 and prepared.report["totals"]["tokens"] == 0


def test_prepare_refuses_a_hub_stream_it_cannot_open_in_one_line(streamed, tmp_path):
    from tabula.runtime.data import prepare

    spec, _ = streamed
    hub = {"kind": "hub", "name": "HuggingFaceFW/nonexistent-tabula-test", "cache": False}
    data = spec.data.model_dump(mode="json", exclude={"curriculum"})
    data["sources"]["web"] = hub
    with pytest.raises(DataError) as raised:
        prepare(make_spec(data), cache_dir=tmp_path)
    assert raised.value.source == "web" and "cannot stream hub dataset" in raised.value.message and "\n" not in str(raised.value)


def test_streamed_rows_number_their_documents_from_the_end_of_document_token():
    from types import SimpleNamespace

    from tabula.runtime.data.sampler import _Rows

    rows = _Rows(2, 6, SimpleNamespace(document_masking=True, eos_id=EOS, image_id=None))
    rows.put(1, np.array([5, 6, EOS, 7, EOS, EOS, 8]))
    batch = rows.batch()
    assert batch.document_ids.tolist() == [[0] * 6, [0, 0, 0, 1, 1, 2]]  # an end-of-document token ends its own document
    assert batch.input_ids[0].tolist() == [0] * 6 and batch.targets[1].tolist() == [6, EOS, 7, EOS, EOS, 8]
