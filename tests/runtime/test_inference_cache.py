"""The cached Decoder against the model's own full forward: every attention kind, batched rows of different
lengths, k tokens at once, rollback, rows joining and leaving, virtual tokens, cache sizes."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import tiny_model
from torch import nn

from tabula.compiler.virtual_tokens import PrefixTokens, PromptTokens
from tabula.runtime.inference import Cache, ContextFull, Decoder, RollbackError
from tabula.runtime.inference.reference import recompute_greedy

PROMPTS = [[5, 17, 99, 3, 42, 7, 250, 11, 64, 2, 9], [200, 1, 30]]
STEPS = 64
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and keeps a shared 2-core machine usable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]  # (T, vocab)


@pytest.mark.parametrize("attention, absorb", [
    ("mha", None), ("gqa", None), ("mqa", None), ("window", None),
    ("mla", True), ("mla", False), ("mla-qk-norm", False),
])
def test_cached_logits_equal_full_recompute_for_64_tokens(attention, absorb):
    model = tiny_model(attention)
    decoder = Decoder(model, absorb=absorb, slack=4)
    cache = decoder.new_cache(len(PROMPTS))
    logits = decoder.prefill(cache, PROMPTS)
    sequences, cached = [list(p) for p in PROMPTS], [logits]
    for _ in range(STEPS):
        tokens = logits.argmax(-1).tolist()
        for sequence, token in zip(sequences, tokens):
            sequence.append(token)
        logits = decoder.step(cache, tokens)
        cached.append(logits)
    assert cache.lengths.tolist() == [len(s) for s in sequences]
    for row, sequence in enumerate(sequences):  # a causal forward's position t sees tokens <= t: one pass checks every step
        expected = full_logits(model, sequence)[len(PROMPTS[row]) - 1 :]  # (STEPS + 1, vocab)
        torch.testing.assert_close(torch.stack([step[row] for step in cached]), expected, atol=TOLERANCE, rtol=0)


def test_the_cache_holds_what_each_kind_should_per_token():
    float_bytes, layers = 4, 2
    sizes = {}
    for attention in ("mha", "gqa", "mqa", "mla"):
        decoder = Decoder(tiny_model(attention))
        cache = decoder.new_cache(1)
        decoder.prefill(cache, [[1, 2, 3]])
        sizes[attention] = cache.bytes_per_token()
    head_dim = 32 // 4
    assert sizes["mha"] == layers * 2 * 4 * head_dim * float_bytes  # keys and values of 4 heads
    assert sizes["gqa"] == layers * 2 * 2 * head_dim * float_bytes  # of 2 key/value heads
    assert sizes["mqa"] == layers * 2 * 1 * head_dim * float_bytes
    assert sizes["mla"] == layers * (16 + 4) * float_bytes  # the kv latent and the shared rotary key only


def test_a_sliding_window_cache_is_bounded_by_the_window():
    model = tiny_model("window", max_seq_len=96)
    decoder = Decoder(model, slack=4)
    cache = decoder.new_cache(1)
    logits = decoder.prefill(cache, [[1, 2, 3]])
    held = []
    for _ in range(40):
        logits = decoder.step(cache, logits.argmax(-1))
        held.append(cache.nbytes())
    assert held[-1] == held[10] == cache.bytes_per_token() * (8 + 4)  # window + slack slots, however long the sequence


def test_rows_of_different_lengths_in_one_batch_equal_each_alone():
    model = tiny_model("window")
    decoder = Decoder(model)
    prompts = [[3] * 20, [7, 8], [9, 10, 11, 12, 13]]
    batch = decoder.new_cache(3)
    batched = [decoder.prefill(batch, prompts)]
    for _ in range(12):
        batched.append(decoder.step(batch, batched[-1].argmax(-1)))
    for row, prompt in enumerate(prompts):
        alone = decoder.new_cache(1)
        logits = decoder.prefill(alone, [prompt])
        for step in range(13):
            torch.testing.assert_close(logits[0], batched[step][row], atol=TOLERANCE, rtol=0)
            logits = decoder.step(alone, logits.argmax(-1))


@pytest.mark.parametrize("attention", ["gqa", "window", "mla"])
def test_k_tokens_at_once_then_rollback(attention):
    """Speculative decoding's verification: k tokens in one forward give each position's logits; rolling
    back the rejected ones leaves the cache as if they were never fed."""
    model = tiny_model(attention)
    decoder = Decoder(model, slack=4)
    prompt, draft = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23]
    cache = decoder.new_cache(1)
    decoder.prefill(cache, [prompt])
    logits = decoder.forward(cache, torch.tensor([draft]))[0]  # (k, vocab)
    torch.testing.assert_close(logits, full_logits(model, prompt + draft)[-len(draft):], atol=TOLERANCE, rtol=0)
    cache.rollback(3)  # keep the first draft token only
    assert cache.lengths.tolist() == [len(prompt) + 1]
    after = decoder.step(cache, [99])
    torch.testing.assert_close(after[0], full_logits(model, prompt + draft[:1] + [99])[-1], atol=TOLERANCE, rtol=0)


def test_a_window_cannot_roll_back_past_its_slack():
    decoder = Decoder(tiny_model("window"), slack=2)
    cache = decoder.new_cache(1)
    decoder.prefill(cache, [list(range(1, 30))])
    decoder.forward(cache, torch.tensor([[1, 2, 3, 4]]))
    with pytest.raises(RollbackError, match="slack"):
        cache.rollback(4)
    cache.rollback(2)  # within the slack: fine
    with pytest.raises(ValueError, match="roll back"):
        cache.rollback(100)


def test_rows_leave_and_join():
    model = tiny_model("gqa")
    decoder = Decoder(model)
    a, b = decoder.new_cache(2), decoder.new_cache(1)
    decoder.prefill(a, [[1, 2, 3, 4, 5], [6, 7]])
    decoder.prefill(b, [[8, 9, 10, 11, 12, 13, 14]])
    joined = Cache.concat([a.select([1]), b])  # row 0 of `a` left; `b`'s row joined
    logits = decoder.step(joined, [50, 60])
    torch.testing.assert_close(logits[0], full_logits(model, [6, 7, 50])[-1], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(logits[1], full_logits(model, [8, 9, 10, 11, 12, 13, 14, 60])[-1], atol=TOLERANCE, rtol=0)


def test_a_row_past_the_context_is_refused():
    decoder = Decoder(tiny_model("gqa", max_seq_len=8))
    cache = decoder.new_cache(1)
    decoder.prefill(cache, [[1] * 8])
    with pytest.raises(ContextFull, match="context of 8"):
        decoder.step(cache, [1])


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_virtual_tokens_are_in_the_cache(kind):
    model = tiny_model("gqa", seed=5)
    n = 3
    if kind == "prompt":
        model.virtual_tokens = PromptTokens(n, nn.Embedding(n, 32))
    else:
        model.virtual_tokens = PrefixTokens(n, nn.Embedding(n, 2 * 2 * 2 * 8), n_layers=2, n_kv_heads=2, head_dim=8)
    torch.manual_seed(0)
    nn.init.normal_(model.virtual_tokens.encoder.weight)
    decoder = Decoder(model)
    cache = decoder.new_cache(1)
    assert cache.lengths.tolist() == [n]
    ids = [4, 5, 6, 7]
    logits = decoder.prefill(cache, [ids])
    for _ in range(6):
        torch.testing.assert_close(logits[0], full_logits(model, ids)[-1], atol=TOLERANCE, rtol=0)
        ids.append(int(logits.argmax()))
        logits = decoder.step(cache, [ids[-1]])


def test_learned_positions_and_layernorm():
    model = tiny_model("mha", position={"kind": "learned"}, block={"norm": {"kind": "layernorm"}})
    decoder = Decoder(model)
    cache = decoder.new_cache(2)
    logits = decoder.prefill(cache, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], full_logits(model, prompt)[-1], atol=TOLERANCE, rtol=0)


def test_the_uncached_reference_is_greedy_and_crops_to_the_context():
    model = tiny_model("gqa", max_seq_len=8).train()
    prompt = torch.randint(0, 257, (2, 6))
    out = recompute_greedy(model, prompt, max_new_tokens=5)
    assert out.shape == (2, 11) and torch.equal(out[:, :6], prompt)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(out[:, 2:10])[:, -1].argmax(-1)
    assert torch.equal(out[:, 10], expected)
