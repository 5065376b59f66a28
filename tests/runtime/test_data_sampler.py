"""The curriculum sampler: packing without loss, stage switches, mixtures, save/restore, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_helpers import Stage, document, make_spec, write_texts

from tabula.runtime.data import DataError, Sampler, prepare, validation_batches


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """Sources `a` and `b` written in disjoint alphabets: only spaces and eos tokens are shared."""
    root = tmp_path_factory.mktemp("sampler")
    rng = np.random.default_rng(5)

    def text(letters):
        return " ".join("".join(rng.choice(list(letters), size=rng.integers(2, 7))) for _ in range(50))

    a = [text("abcdefghijklm") for _ in range(30)]
    b = [text("nopqrstuvwxyz") for _ in range(30)]
    spec = make_spec({
        "sources": {"a": {"kind": "files", "paths": [str(write_texts(root / "a", a) / "*.txt")]},
                    "b": {"kind": "files", "paths": [str(write_texts(root / "b", b) / "*.txt")]}},
        "validation": {"fraction": "10%"},
        "packing": {"document_masking": True},
        "tokenizer": {"kind": "bpe", "vocab_size": 270, "min_frequency": 1},
    })
    return prepare(spec, cache_dir=root / "cache")


def one_stage(mix, seq_len=16, end=10**9):
    return [Stage(0, 0, end, seq_len, mix)]


def test_every_token_appears_once_per_epoch(two_sources):
    stream = np.asarray(two_sources.train["a"].tokens, dtype=np.int64)
    sampler = Sampler(two_sources, one_stage({"a": 1.0}, seq_len=16), seed=3)
    blocks = -(-len(stream) // 16)
    inputs = np.concatenate([sampler.next_batch(1, 16).input_ids.numpy().ravel() for _ in range(blocks)])
    wrapped = blocks * 16 - len(stream)  # the circular stream's last window repeats this many tokens
    expected = np.concatenate([stream, stream[:wrapped]])
    assert np.array_equal(np.bincount(inputs, minlength=400), np.bincount(expected, minlength=400))
    assert sampler.epochs["a"] == pytest.approx(blocks * 16 / len(stream))
    # The next epoch is another permutation of the same windows.
    second = np.concatenate([sampler.next_batch(1, 16).input_ids.numpy().ravel() for _ in range(blocks)])
    assert not np.array_equal(second, inputs)
    assert np.array_equal(np.bincount(second, minlength=400), np.bincount(expected, minlength=400))


def test_targets_are_the_next_tokens_of_the_stream(two_sources):
    stream = np.asarray(two_sources.train["b"].tokens, dtype=np.int64)
    batch = Sampler(two_sources, one_stage({"b": 1.0}, seq_len=32), seed=1).next_batch(8, 32)
    assert batch.input_ids.shape == batch.targets.shape == (8, 32) and batch.input_ids.dtype == torch.int64
    ring = np.concatenate([stream, stream[:33]])  # a window may wrap past the stream's end (as np.roll does)
    for inputs, targets in zip(batch.input_ids.numpy(), batch.targets.numpy()):
        # where the inputs occur in the stream (a window may also occur more than once), the targets are
        # the tokens after one of those occurrences
        starts = [i for i in range(len(stream)) if np.array_equal(ring[i : i + 32], inputs)]
        assert starts, "the inputs are not a window of the stream"
        assert any(np.array_equal(ring[start + 1 : start + 33], targets) for start in starts)


def test_stage_switches_at_its_token_count(two_sources):
    stages = [Stage(0, 0, 1024, 16, {"a": 1.0}), Stage(1, 1024, 4096, 32, {"b": 1.0})]
    sampler = Sampler(two_sources, stages, seed=0)
    a_tokens = set(np.asarray(two_sources.train["a"].tokens).tolist())
    for _ in range(16):  # 16 batches of 4 x 16 tokens: exactly 1024
        assert sampler.stage_at().index == 0
        assert set(sampler.next_batch(4, 16).input_ids.numpy().ravel().tolist()) <= a_tokens
    assert sampler.tokens == 1024 and sampler.cursors == {"a": 1024, "b": 0}
    assert sampler.stage_at().index == 1
    batch = sampler.next_batch(2, 32)
    b_tokens = set(np.asarray(two_sources.train["b"].tokens).tolist())
    assert len(a_tokens - b_tokens) > 10 and set(batch.input_ids.numpy().ravel().tolist()) <= b_tokens
    assert sampler.cursors == {"a": 1024, "b": 64} and sampler.stage_at(10**6).index == 1


def test_mixture_weights_choose_sources(two_sources):
    sampler = Sampler(two_sources, one_stage({"a": 3.0, "b": 1.0}), seed=11)
    for _ in range(100):
        sampler.next_batch(40, 16)
    assert sampler.cursors["a"] / sampler.tokens == pytest.approx(0.75, abs=0.03)


def test_save_and_restore_give_identical_next_batches(two_sources):
    stages = [Stage(0, 0, 512, 16, {"a": 1.0, "b": 1.0}), Stage(1, 512, 10**6, 32, {"a": 1.0, "b": 2.0})]
    sampler = Sampler(two_sources, stages, seed=42)
    for _ in range(5):
        sampler.next_batch(8, 16)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = [sampler.next_batch(8, 16 if sampler.tokens < 512 else 32) for _ in range(4)]
    restored = Sampler(two_sources, stages, seed=42)
    restored.load_state_dict(state)
    for batch in expected:
        again = restored.next_batch(*batch.input_ids.shape)
        assert torch.equal(again.input_ids, batch.input_ids) and torch.equal(again.targets, batch.targets)
        assert torch.equal(again.document_ids, batch.document_ids)
    fresh = Sampler(two_sources, stages, seed=42)
    first = Sampler(two_sources, stages, seed=42).next_batch(8, 16)
    assert torch.equal(fresh.next_batch(8, 16).input_ids, first.input_ids)  # a pure function of the position
    assert not torch.equal(Sampler(two_sources, stages, seed=43).next_batch(8, 16).input_ids, first.input_ids)
    with pytest.raises(DataError, match="seed 42 \\(now 7\\)"):
        Sampler(two_sources, stages, seed=7).load_state_dict(state)
    for damaged in ({**state, "tokens": "many"}, {k: v for k, v in state.items() if k != "cursors"}, [state]):
        kept = Sampler(two_sources, stages, seed=42)
        with pytest.raises(DataError, match="sampler state"):
            kept.load_state_dict(damaged)
        assert kept.tokens == 0 and set(kept.cursors.values()) == {0}  # unchanged by a refused state


def test_a_curriculum_that_tiles_other_blocks_finishes_the_epoch_in_order_then_retiles(two_sources):
    """A resumed run may add a stage (seq_len 16 alone tiles blocks of 16; with 48, blocks of 48)."""
    stream = np.asarray(two_sources.train["a"].tokens, dtype=np.int64)
    old, new = one_stage({"a": 1.0}), [Stage(0, 0, 10**9, 16, {"a": 1.0}), Stage(1, 10**9, 2 * 10**9, 48, {"a": 1.0})]
    blocks = -(-len(stream) // 16)
    sampler = Sampler(two_sources, old, seed=9)
    for _ in range(blocks // 3):
        sampler.next_batch(1, 16)
    state = json.loads(json.dumps(sampler.state_dict()))
    rest = [sampler.next_batch(1, 16).input_ids for _ in range(blocks - blocks // 3)]  # the rest of epoch 0

    resumed = Sampler(two_sources, new, seed=9)
    note = resumed.load_state_dict(state)
    assert note is not None and "blocks of 48 tokens (were 16)" in note
    assert all(torch.equal(resumed.next_batch(1, 16).input_ids, expected) for expected in rest)  # epoch 0 unchanged
    assert resumed.cursors["a"] == blocks * 16
    # Epoch 1 in the new tiling: blocks of 48 in a permutation, every token once (the wrap excepted).
    blocks48 = -(-len(stream) // 48)
    epoch1 = np.concatenate([resumed.next_batch(1, 16).input_ids.numpy().ravel() for _ in range(blocks48 * 3)])
    expected = np.concatenate([stream, stream[: blocks48 * 48 - len(stream)]])
    assert np.array_equal(np.bincount(epoch1, minlength=400), np.bincount(expected, minlength=400))
    assert not np.array_equal(epoch1[:48], stream[:48]) or not np.array_equal(epoch1[48:96], stream[48:96])

    # Resuming again from mid-old-epoch replays the same order (the segments travel with the state).
    again = Sampler(two_sources, new, seed=9)
    again.load_state_dict(state)
    midway = json.loads(json.dumps(again.state_dict()))
    replay = Sampler(two_sources, new, seed=9)
    assert replay.load_state_dict(midway) is None  # same blocks now: no note
    assert all(torch.equal(replay.next_batch(1, 16).input_ids, again.next_batch(1, 16).input_ids) for _ in range(blocks + 5))
    with pytest.raises(DataError, match="damaged"):
        Sampler(two_sources, new, seed=9).load_state_dict({**midway, "segments": {"a": [[5, 0, 48]]}})


def test_document_ids_number_documents_within_a_row(two_sources):
    batch = Sampler(two_sources, one_stage({"a": 1.0}, seq_len=512), seed=0).next_batch(4, 512)
    ends = (batch.input_ids == two_sources.eos_id).long()
    assert torch.equal(batch.document_ids, torch.cumsum(ends, 1) - ends)
    assert batch.document_ids.max() >= 1  # 512 tokens span more than one document here


def test_validation_batches_are_deterministic_and_held_out(two_sources):
    first = validation_batches(two_sources, tokens=256, seq_len=32, batch_size=3)
    second = validation_batches(two_sources, tokens=256, seq_len=32, batch_size=3)
    assert [b.input_ids.shape[0] for b in first] == [3, 3, 2]
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(first, second))
    val_tokens = set(np.asarray(two_sources.val["a"].tokens).tolist()) | set(np.asarray(two_sources.val["b"].tokens).tolist())
    assert set(torch.cat([b.input_ids for b in first]).ravel().tolist()) <= val_tokens


def test_a_stage_cannot_mix_an_unknown_source(two_sources):
    with pytest.raises(DataError, match="'c'"):
        Sampler(two_sources, one_stage({"c": 1.0}), seed=0)


def test_no_validation_data_gives_no_batches(tmp_path, tabula_cache):
    folder = write_texts(tmp_path / "c", [document(np.random.default_rng(0)) for _ in range(5)])
    spec = make_spec({"sources": {"c": {"kind": "files", "paths": [str(folder / "*.txt")]}}, "validation": {"fraction": 0}})
    assert validation_batches(prepare(spec), tokens=64, seq_len=16, batch_size=2) == []
    too_few = prepare(make_spec({"sources": {"c": {"kind": "files", "paths": [str(folder / "*.txt")]}}, "validation": {"fraction": "2%"}}))
    assert too_few.val["c"].n_documents == 0 and "no validation documents (5 kept" in too_few.report["warnings"][0]


def test_a_seq_len_change_mid_block_loses_no_token(two_sources):
    stream = np.asarray(two_sources.train["a"].tokens, dtype=np.int64)
    stages = [Stage(0, 0, 48, 16, {"a": 1.0}), Stage(1, 48, 10**9, 32, {"a": 1.0})]
    sampler = Sampler(two_sources, stages, seed=9)
    parts = [sampler.next_batch(1, 16).input_ids.numpy().ravel() for _ in range(3)]  # cursor 48: mid-block
    epoch = -(-len(stream) // 32) * 32
    while sum(map(len, parts)) < epoch:
        parts.append(sampler.next_batch(1, 32).input_ids.numpy().ravel())
    inputs = np.concatenate(parts)[:epoch]
    expected = np.concatenate([stream, stream[: epoch - len(stream)]])
    assert np.array_equal(np.bincount(inputs, minlength=400), np.bincount(expected, minlength=400))


def test_planned_epochs_show_repetition(two_sources):
    from tabula.runtime.data import planned_epochs

    a, b = two_sources.train["a"].n_tokens, two_sources.train["b"].n_tokens
    stages = [Stage(0, 0, 3 * a, 16, {"a": 1.0}), Stage(1, 3 * a, 3 * a + b, 32, {"a": 1.0, "b": 1.0})]
    assert planned_epochs(two_sources, stages) == pytest.approx({"a": 3 + b / 2 / a, "b": 0.5})


# ---------------------------------------------------------------- data.mixture


def test_temperature_weights_follow_the_formula():
    from tabula.runtime.data.mixing import temperature_weights
    from tabula.schemas.data import TemperatureMixture

    sizes = {"en": 9000, "fr": 900, "sw": 90}
    for t in (1.0, 3.3, 100.0):
        weights = temperature_weights({"en": 1.0, "fr": 1.0, "sw": 1.0}, sizes, 10**6, TemperatureMixture(kind="temperature", mix_temperature=t))
        total = sum(n ** (1 / t) for n in sizes.values())
        assert weights == pytest.approx({name: n ** (1 / t) / total for name, n in sizes.items()}, rel=1e-12)
    weighted = temperature_weights({"en": 1.0, "fr": 2.0}, sizes, 1, TemperatureMixture(kind="temperature", mix_temperature=2.0))
    assert weighted["fr"] / weighted["en"] == pytest.approx(2.0 * (900 / 9000) ** 0.5)


def test_unimax_weights_cap_epochs_and_share_the_rest_evenly():
    from tabula.runtime.data.mixing import unimax_weights
    from tabula.schemas.data import UniMaxMixture

    sizes = {"big": 100_000, "mid": 5_000, "small": 1_000}
    weights = unimax_weights(dict.fromkeys(sizes, 1.0), sizes, 60_000, UniMaxMixture(kind="unimax", max_epochs=2.0))
    # small capped at 2 x 1000; mid's fair share (29000) capped at 2 x 5000; big takes the rest.
    assert weights == pytest.approx({"small": 2_000 / 60_000, "mid": 10_000 / 60_000, "big": 48_000 / 60_000})
    even = unimax_weights(dict.fromkeys(sizes, 1.0), sizes, 2_400, UniMaxMixture(kind="unimax", max_epochs=4.0))
    assert even == pytest.approx(dict.fromkeys(sizes, 1 / 3))  # no cap binds: uniform


def _online(every=256, **extra):
    from tabula.schemas.data import OnlineMixture

    return OnlineMixture(kind="online", every_tokens=every, **{"step_size": 0.5, "smoothing": 0.1, "min_weight": 0.05, "max_weight": 0.9, **extra})


def _planted_losses(batch):
    """A planted setup: source a's rows are hard (loss 4), b's easy (loss 1)."""
    return {name: (4.0 if name == "a" else 1.0) for name in sorted(set(batch.sources))}


def test_online_mixture_moves_weight_to_the_high_loss_source_within_bounds(two_sources):
    sampler = Sampler(two_sources, one_stage({"a": 1.0, "b": 1.0}), seed=5, mixture=_online())
    assert sampler.weights() == pytest.approx({"a": 0.5, "b": 0.5})
    updates = 0
    for _ in range(40):
        batch = sampler.next_batch(8, 16)
        assert len(batch.sources) == 8
        if sampler.wants_losses():
            sampler.observe(_planted_losses(batch))
            updates += 1
    assert updates == 40 * 128 // 256
    weights = sampler.weights()
    assert weights["a"] == pytest.approx(0.9) and weights["b"] == pytest.approx(0.1)  # max_weight holds
    before = dict(sampler.cursors)
    for _ in range(20):
        sampler.next_batch(8, 16)
    assert (sampler.cursors["a"] - before["a"]) / (20 * 128) > 0.8
    # A reference loss equal to the planted one leaves no excess: the weights stay where the stage put them.
    flat = Sampler(two_sources, one_stage({"a": 1.0, "b": 1.0}), seed=5, mixture=_online(reference_loss={"a": 4.0, "b": 1.0}))
    for _ in range(10):
        batch = flat.next_batch(8, 16)
        if flat.wants_losses():
            flat.observe(_planted_losses(batch))
    assert flat.weights() == pytest.approx({"a": 0.5, "b": 0.5})


def test_online_mixture_resumes_bit_identically(two_sources):
    stages = [Stage(0, 0, 512, 16, {"a": 1.0, "b": 1.0}), Stage(1, 512, 10**6, 32, {"a": 1.0, "b": 2.0})]

    def run(sampler, steps):
        out = []
        for _ in range(steps):
            batch = sampler.next_batch(8, 16 if sampler.tokens < 512 else 32)
            if sampler.wants_losses():  # a loss that depends on the data drawn, as a model's would
                sampler.observe({name: float(batch.input_ids[[i for i, s in enumerate(batch.sources) if s == name]].float().mean()) / 100
                                 for name in sorted(set(batch.sources))})
            out.append(batch)
        return out

    sampler = Sampler(two_sources, stages, seed=42, mixture=_online(every=200))
    run(sampler, 6)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["mixture"]["last_update"] > 0
    expected, weights = run(sampler, 8), sampler.weights()
    restored = Sampler(two_sources, stages, seed=42, mixture=_online(every=200))
    restored.load_state_dict(state)
    again = run(restored, 8)
    assert all(torch.equal(x.input_ids, y.input_ids) and x.sources == y.sources for x, y in zip(again, expected))
    assert restored.weights() == weights and restored.state_dict() == sampler.state_dict()
    with pytest.raises(DataError, match="damaged"):
        Sampler(two_sources, stages, seed=42, mixture=_online(every=200)).load_state_dict({**state, "mixture": {"log_factors": {"a": "x"}}})


def test_static_mixtures_weight_the_sampler_and_planned_epochs(two_sources):
    from tabula.runtime.data import planned_epochs
    from tabula.schemas.data import TemperatureMixture

    mixture = TemperatureMixture(kind="temperature", mix_temperature=0.5)  # sharpens: the larger source dominates
    a, b = two_sources.train["a"].n_tokens, two_sources.train["b"].n_tokens
    sampler = Sampler(two_sources, one_stage({"a": 1.0, "b": 1.0}), seed=1, mixture=mixture)
    assert sampler.weights() == pytest.approx({"a": a**2 / (a**2 + b**2), "b": b**2 / (a**2 + b**2)})
    epochs = planned_epochs(two_sources, one_stage({"a": 1.0, "b": 1.0}, end=a + b), mixture)
    assert epochs["a"] == pytest.approx((a + b) * sampler.weights()["a"] / a)
    assert "mixture" not in sampler.state_dict()  # static weights: nothing to carry
