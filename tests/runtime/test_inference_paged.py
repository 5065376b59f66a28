"""The paged cache (runtime/inference/paged.py, pool.py): full-attention layers' keys in blocks of one pool.
Its view equals the linear buffer's as rows of different lengths join and leave, joining copies no key,
the pool's memory is fixed at its size, and the server's scheduler returns every block it hands out."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import tiny_model
from torch import nn

from tabula.compiler.virtual_tokens import PrefixTokens
from tabula.runtime.inference import Cache, Decoder
from tabula.runtime.inference.buffer import TokenBuffer
from tabula.runtime.inference.paged import PagedBuffer
from tabula.runtime.inference.pool import BlockPool, PoolExhausted
from tabula.runtime.serving.protocol import GenerationRequest, SamplingParams
from tabula.runtime.serving.scheduler import Scheduler, SchedulerConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fields(B: int, T: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"k": torch.randn(B, T, 2, 3, generator=generator), "v": torch.randn(B, T, 2, 3, generator=generator)}


def store(buffer, new, lengths, n_valid):
    buffer.write(new, lengths, n_valid)
    return buffer.attend_view(new, lengths)


def assert_same_keys(paged, linear, ends):
    """Every row's keys at its own positions (0..end-1) are the same in both views; past them: masked."""
    (pk, ppos), (lk, lpos) = paged, linear
    for row, end in enumerate(ends):
        for name in ("k", "v"):
            torch.testing.assert_close(pk[name][row, :end], lk[name][row, :end], atol=0, rtol=0)
    assert torch.equal(ppos, lpos)


def test_the_paged_view_equals_the_linear_one_as_rows_join_and_leave():
    g = torch.Generator().manual_seed(0)
    pool = BlockPool(16, block_size=4)
    paged, linear = PagedBuffer(pool, 0, [10, 11, 12]), TokenBuffer(3)
    new, lengths, valid = fields(3, 9, g), torch.zeros(3, dtype=torch.long), torch.tensor([5, 2, 9])
    assert_same_keys(store(paged, new, lengths, valid), store(linear, new, lengths, valid), [5, 2, 9])
    storage = pool.tensors[(0, "k")]
    pointer, before = storage.data_ptr(), storage.clone()
    assert [len(pool.owned[s]) for s in (10, 11, 12)] == [2, 1, 3]

    # row 1 leaves (its blocks back to the pool); a prefilled row of 6 tokens joins
    keep = torch.tensor([0, 2])
    pool.release(11)
    newcomer, fresh = PagedBuffer(pool, 0, [13]), TokenBuffer(1)
    one, zero, six = fields(1, 6, g), torch.zeros(1, dtype=torch.long), torch.tensor([6])
    store(newcomer, one, zero, six), store(fresh, one, zero, six)
    moved = storage.clone()
    paged, linear = PagedBuffer.concat([paged.select(keep), newcomer]), TokenBuffer.concat([linear.select(keep), fresh])
    assert pool.tensors[(0, "k")].data_ptr() == pointer and torch.equal(pool.tensors[(0, "k")], moved)  # no key moved
    assert not torch.equal(moved, before)  # the newcomer wrote into the pool's blocks (reusing row 1's)

    lengths = torch.tensor([5, 9, 6])
    for _ in range(5):  # decoding steps, the rows crossing block boundaries at different steps
        step = fields(3, 1, g)
        ones = torch.ones(3, dtype=torch.long)
        assert_same_keys(store(paged, step, lengths, ones), store(linear, step, lengths, ones), (lengths + 1).tolist())
        lengths = lengths + 1
    assert sorted(pool.owned) == [10, 12, 13] and pool.used == 3 + 4 + 3
    assert paged.nbytes() == pool.used * 4 * paged.bytes_per_token() and paged.bytes_per_token() == 2 * 6 * 4
    for seq in (10, 12, 13):
        pool.release(seq)
    assert pool.used == 0 and sorted(pool.free) == list(range(16))


def test_a_write_past_the_pool_raises_and_stores_nothing():
    pool = BlockPool(2, block_size=4)
    buffer = PagedBuffer(pool, 0, [1, 2])
    with pytest.raises(PoolExhausted, match="need 4 more blocks of 4 tokens, 2 free of 2"):
        buffer.write(fields(2, 6, torch.Generator().manual_seed(1)), torch.zeros(2, dtype=torch.long), torch.tensor([6, 6]))
    assert pool.tensors == {} and pool.used == 0 and not pool.owned


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_a_paged_cache_decodes_as_the_linear_one(attention):
    model = tiny_model(attention)
    decoder = Decoder(model)
    pool = BlockPool(24, block_size=4)
    paged, linear = decoder.new_cache(2, pool=pool, seqs=[0, 1]), decoder.new_cache(2)
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    torch.testing.assert_close(decoder.prefill(paged, prompts), decoder.prefill(linear, prompts), atol=1e-6, rtol=0)
    pointers = {key: t.data_ptr() for key, t in pool.tensors.items()}
    assert len(pointers) == 2 * 2  # two layers, two fields each (k, v; MLA's latent, k_rope)
    joiner = [8, 9, 10, 11, 12, 13, 14]
    paged_b, linear_b = decoder.new_cache(1, pool=pool, seqs=[2]), decoder.new_cache(1)
    decoder.prefill(paged_b, [joiner]), decoder.prefill(linear_b, [joiner])
    pool.release(0)  # row 0 leaves, row 2 joins
    paged, linear = Cache.concat([paged.select([1]), paged_b]), Cache.concat([linear.select([1]), linear_b])
    for token in range(20, 30):
        torch.testing.assert_close(decoder.step(paged, [token, token + 1]), decoder.step(linear, [token, token + 1]),
                                   atol=1e-6, rtol=0)
    assert {key: t.data_ptr() for key, t in pool.tensors.items()} == pointers  # the pool tensors, never reallocated
    assert paged.nbytes() < linear.nbytes()


def test_the_scheduler_pool_is_the_cache_memory_and_every_block_comes_back():
    model = tiny_model("gqa", max_seq_len=64)
    config = SchedulerConfig(max_batch=4, cache_tokens=48, block_size=4)  # 12 blocks: the sequences preempt each other
    scheduler = Scheduler(Decoder(model), lambda ids: "", config)
    pool = scheduler.pool
    generator = torch.Generator().manual_seed(2)
    handles, bytes_seen, pointers = [], set(), set()
    for wave in range(3):
        for length in (3, 7, 1, 5, 9):
            prompt = torch.randint(0, 257, (length,), generator=generator).tolist()
            handles.append(scheduler.submit(GenerationRequest(tuple(prompt), SamplingParams(max_tokens=10, temperature=0.0)),
                                            lambda event: None))
        scheduler.turn()
        scheduler.turn()
        handles[-1].cancel()  # a client leaves mid-way
        for _ in range(200):
            if not scheduler.running and not scheduler.waiting:
                break
            scheduler.turn()
            assert pool.used <= pool.n_blocks
            bytes_seen.add(pool.nbytes())
            pointers.add(tuple(t.data_ptr() for t in pool.tensors.values()))
        assert pool.used == 0 and sorted(pool.free) == list(range(pool.n_blocks)) and not pool.owned
    assert scheduler.counters.preempted >= 1
    per_token = 2 * 2 * 2 * 8 * 4  # layers x (k, v) x n_kv_heads x head_dim x fp32 bytes
    assert pool.bytes_per_token() == per_token and bytes_seen == {12 * 4 * per_token} and len(pointers) == 1
    assert scheduler.stats()["cache_pool_bytes"] == 12 * 4 * per_token


def scheduled(model, *, paged: bool, cache_tokens: int | None = None) -> tuple[list[list[int]], int]:
    """Greedy outputs of six requests through the scheduler (paged or not), and its preemptions."""
    scheduler = Scheduler(Decoder(model), lambda ids: "", SchedulerConfig(max_batch=4, cache_tokens=cache_tokens, block_size=4))
    scheduler.paged = paged
    generator, outs = torch.Generator().manual_seed(0), []
    for n in (3, 9, 1, 6, 4, 12):
        tokens: list[int] = []
        outs.append(tokens)
        prompt = tuple(torch.randint(0, 250, (n,), generator=generator).tolist())
        scheduler.submit(GenerationRequest(prompt, SamplingParams(max_tokens=10, temperature=0.0)),
                         lambda event, tokens=tokens: None if event.token_id is None else tokens.append(event.token_id))
    while scheduler.running or scheduler.waiting:
        scheduler.turn()
    assert scheduler.pool.used == 0
    return outs, scheduler.counters.preempted


def test_prefix_tuned_virtual_tokens_take_blocks_of_their_own():
    model = tiny_model("gqa", seed=5)
    model.virtual_tokens = PrefixTokens(3, nn.Embedding(3, 2 * 2 * 2 * 8), n_layers=2, n_kv_heads=2, head_dim=8)
    torch.manual_seed(0)
    nn.init.normal_(model.virtual_tokens.encoder.weight)
    reference, _ = scheduled(model, paged=False)
    outs, preempted = scheduled(model, paged=True, cache_tokens=48)
    assert outs == reference and preempted >= 1
