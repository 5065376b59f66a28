"""Speculative decoding (runtime/inference/speculative.py): greedy output is the target's own greedy output
token for token, and speculative sampling's output is distributed as the target's (Leviathan et al.'s
rejection scheme), checked by chi-square tests on tiny vocabularies with fixed seeds."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from chain_models import VOCAB, draft_model_spec, markov_tokens, tiny_model_spec, train_tiny
from runtime_helpers import one_thread_fixture
from tabula.compiler.model import Transformer
from tabula.runtime.inference.decoder import Decoder
from tabula.runtime.inference.sampling import SamplingParams
from tabula.runtime.inference.speculative import DraftRefused, SpeculativeDecoder, accept, check_draft

one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def target():
    return train_tiny()


@pytest.fixture(scope="module")
def draft():
    return train_tiny(draft_model_spec())


def plain_greedy(model, prompt: list[int], n: int) -> list[int]:
    decoder = Decoder(model)
    cache = decoder.new_cache(1)
    logits = decoder.prefill(cache, [prompt])[0]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = decoder.step(cache, [out[-1]])[0]
    return out


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_speculative_output_is_the_targets_greedy_output(target, draft, k):
    prompt = markov_tokens(1, seed=5)[0, :5].tolist()
    n = target.max_seq_len - len(prompt)  # to the end of the context: the last rounds draft fewer than k
    speculative = SpeculativeDecoder(Decoder(target), Decoder(draft), k=k)
    out = [token for token, _ in speculative.generate(prompt, SamplingParams(max_new_tokens=n))]
    assert out == plain_greedy(target, prompt, n)
    stats = speculative.stats
    assert 0 < stats.accepted <= stats.proposed and stats.rounds < n  # some drafts passed: fewer target passes
    assert 0.0 < stats.acceptance_rate <= 1.0


def test_a_poor_draft_changes_nothing_but_the_acceptance(target):
    untrained = Transformer(draft_model_spec(), VOCAB).materialize("cpu", 7).eval()
    prompt = markov_tokens(1, seed=6)[0, :3].tolist()
    speculative = SpeculativeDecoder(Decoder(target), Decoder(untrained), k=3)
    out = [token for token, _ in speculative.generate(prompt, SamplingParams(max_new_tokens=20))]
    assert out == plain_greedy(target, prompt, 20)


def test_the_verification_keeps_each_positions_distribution():
    """Context-free distributions: p_j the target's at position j, q_j the draft's. Whatever the draft
    proposes, the j-th token a round emits (given that the round reaches it) is distributed as p_j: through
    acceptance, the residual after a rejection, and the bonus token after k acceptances."""
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])  # (k + 1, vocab)
    q = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1]])  # (k, vocab), far from p
    counts = torch.zeros(3, 4)
    for _ in range(3_000):
        drafted = [int(torch.multinomial(q[i], 1, generator=generator)) for i in range(2)]
        n, token = accept(p, q, drafted, greedy=False, generator=generator)
        for j, out in enumerate([*drafted[:n], token]):
            counts[j, out] += 1
    for j in range(3):
        assert counts[j].sum() > 600  # every position is reached often (a rejection, an acceptance, the bonus)
        result = chisquare(counts[j].numpy(), (p[j] * counts[j].sum()).numpy())
        assert result.pvalue > 1e-3, (j, counts[j], p[j])


def test_speculative_sampling_draws_the_targets_two_token_distribution():
    """End to end on a 4-token vocabulary: two random models (target and draft differ), two tokens after a
    prompt; the counts of each (first, second) pair over 200 seeded generations against the target's own
    joint probability, from its full forward."""
    spec = tiny_model_spec(d_model=16, n_layers=1, block={"norm": {"kind": "rmsnorm"}, "attention": {"kind": "gqa", "n_heads": 2, "n_kv_heads": 1},
                                                          "mlp": {"kind": "swiglu", "hidden": 32}})

    def random_model(seed: int) -> Transformer:
        model = Transformer(spec, 4).materialize("cpu", seed).eval()
        with torch.no_grad():
            model.embed.weight.mul_(6)  # logits of a few nats: distributions neither flat nor one-hot
        return model

    target, draft = random_model(1), random_model(2)
    prompt = [1, 2, 3]
    with torch.no_grad():
        first = target(torch.tensor([prompt]))[0, -1].softmax(-1)
        joint = torch.stack([first[a] * target(torch.tensor([[*prompt, a]]))[0, -1].softmax(-1) for a in range(4)])
        q = draft(torch.tensor([prompt]))[0, -1].softmax(-1)
    assert (first - q).abs().sum() > 0.2  # the draft is wrong often enough for rejections to matter
    speculative = SpeculativeDecoder(Decoder(target), Decoder(draft), k=2)
    n = 200
    counts = torch.zeros(4, 4)
    rejected = 0
    for seed in range(n):
        out = [token for token, _ in speculative.generate(prompt, SamplingParams(max_new_tokens=2, temperature=1.0, seed=seed))]
        counts[out[0], out[1]] += 1
        rejected += speculative.stats.proposed - speculative.stats.accepted
    assert rejected > 10
    expected = joint.flatten() * n
    keep = expected >= 5  # chi-square needs expected counts of about 5 or more: the rare pairs pooled
    observed = torch.cat([counts.flatten()[keep], counts.flatten()[~keep].sum()[None]])
    pooled = torch.cat([expected[keep], expected[~keep].sum()[None]])
    assert chisquare(observed.numpy(), pooled.numpy() * observed.sum().item() / pooled.sum().item()).pvalue > 1e-3, (counts, joint)


def test_a_draft_with_another_tokenizer_is_refused(target):
    with pytest.raises(DraftRefused, match="another tokenizer"):
        check_draft({"a": 0, "b": 1}, {"a": 0, "c": 1})
    check_draft({"a": 0, "b": 1}, {"b": 1, "a": 0})
    other = Transformer(draft_model_spec(), VOCAB + 1).materialize("cpu", 0).eval()
    with pytest.raises(DraftRefused, match="vocabulary has 65 tokens, the target's 64"):
        SpeculativeDecoder(Decoder(target), Decoder(other))


def test_the_speculative_generator_completes_as_the_plain_one(target, draft):
    from tabula.runtime.inference import Generator
    from tabula.runtime.inference.speculative import SpeculativeGenerator

    prompts = [markov_tokens(1, seed=s)[0, :4].tolist() for s in (8, 9)]
    plain = Generator(target, eos_id=None)
    speculative = SpeculativeGenerator(target, None, draft=draft, k=3)
    params = SamplingParams(max_new_tokens=24)
    expected = plain.generate(prompts, params)
    got = speculative.generate(prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.finish_reason for c in got] == ["length", "length"]
    assert got[0].logprobs == pytest.approx(expected[0].logprobs, abs=1e-4)
    assert speculative.stats.proposed > 0 and 0 < speculative.stats.acceptance_rate <= 1
    stop = expected[0].token_ids[10]  # a stop id ends the row there, as in the plain generator
    with_stop = SamplingParams(max_new_tokens=24, stop_token_ids=(stop,))
    assert speculative.generate(prompts[0], with_stop).token_ids == plain.generate(prompts[0], with_stop).token_ids
    long = SamplingParams(max_new_tokens=200)  # to the end of the context
    ends = speculative.generate(prompts[0], long)
    assert ends.finish_reason == "context" and ends.token_ids == plain.generate(prompts[0], long).token_ids
