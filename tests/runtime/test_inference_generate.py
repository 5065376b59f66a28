"""Sampling, stop strings, streaming text and the Generator's batching (runtime/inference)."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import EOS, byte_tokenizer, tiny_model

from tabula.runtime.inference import Generator, PromptTooLong, SamplingParams, UnknownToken, greedy_ids
from tabula.runtime.inference.detok import IncrementalDecoder, StopText
from tabula.runtime.inference.reference import recompute_greedy
from tabula.runtime.inference.sampling import process

SAMPLED = {"max_new_tokens": 24, "temperature": 1.3, "top_k": 50, "top_p": 0.95, "min_p": 0.01, "repetition_penalty": 1.2}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator():
    tokenizer = byte_tokenizer()
    return Generator(tiny_model("gqa", seed=11), tokenizer, eos_id=tokenizer.token_to_id(EOS))


def test_processors():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, -1.0])
    greedy = SamplingParams()
    assert torch.equal(process(logits, greedy), logits)
    assert torch.isinf(process(logits, SamplingParams(temperature=1, top_k=2))[2:]).all()
    probs = logits.softmax(-1)  # [0.64, 0.23, 0.09, 0.03, 0.004]: top-p 0.8 keeps the two reaching it
    kept = ~torch.isinf(process(logits, SamplingParams(temperature=1, top_p=0.8)))
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.8
    kept = ~torch.isinf(process(logits, SamplingParams(temperature=1, min_p=0.1)))  # >= 0.064
    assert kept.tolist() == [True, True, True, False, False]
    penalised = process(logits, SamplingParams(repetition_penalty=2.0), torch.tensor([0, 4]))
    assert penalised.tolist() == [2.0, 3.0, 2.0, 1.0, -2.0]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_greedy_is_the_uncached_reference(generator):
    prompt = generator.encode("def f(x):")
    expected = recompute_greedy(generator.model, torch.tensor([prompt]), 30)[0, len(prompt):].tolist()
    assert generator.generate(prompt, max_new_tokens=30, ignore_eos=True).token_ids == expected
    assert greedy_ids(generator.model, prompt, 30) == expected


def test_greedy_ids_slides_past_the_context_as_the_reference_does():
    model = tiny_model("window", max_seq_len=16)
    prompt = list(range(1, 12))
    assert greedy_ids(model, prompt, 20) == recompute_greedy(model, torch.tensor([prompt]), 20)[0, 11:].tolist()


def test_sampling_is_reproducible_with_a_seed(generator):
    first = generator.generate("import ", seed=5, **SAMPLED)
    again = generator.generate("import ", seed=5, **SAMPLED)
    other = generator.generate("import ", seed=6, **SAMPLED)
    assert first.token_ids == again.token_ids and first.logprobs == again.logprobs
    assert first.token_ids != other.token_ids


def test_a_batch_equals_each_prompt_alone(generator):
    prompts = ["class A:", "x", "for i in range(10):\n    "]
    for params in (SamplingParams(max_new_tokens=20, ignore_eos=True), SamplingParams(seed=3, ignore_eos=True, **SAMPLED)):
        batched = generator.generate(prompts, params)
        for prompt, completion in zip(prompts, batched):
            alone = generator.generate(prompt, params)
            assert completion.token_ids == alone.token_ids and completion.text == alone.text
            assert completion.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_logprobs_are_the_models(generator):
    completion = generator.generate([1, 2, 3], max_new_tokens=5, top_logprobs=3, ignore_eos=True)
    with torch.no_grad():
        full = torch.log_softmax(generator.model(torch.tensor([[1, 2, 3, *completion.token_ids]]))[0], -1)
    for step, (token, logprob) in enumerate(zip(completion.token_ids, completion.logprobs)):
        assert logprob == pytest.approx(float(full[2 + step, token]), abs=1e-5)
        assert completion.top_logprobs[step][0][1] == pytest.approx(float(full[2 + step].max()), abs=1e-5)


def test_stop_strings_end_the_text_before_them(generator):
    free = generator.generate("a", max_new_tokens=40, ignore_eos=True)
    stop = free.text[10:13]
    assert len(stop) == 3
    cut = free.text.find(stop)
    stopped = generator.generate("a", max_new_tokens=40, ignore_eos=True, stop=(stop, "never there"))
    assert stopped.text == free.text[:cut] and stopped.finish_reason == "stop" and stopped.stop == stop
    streamed = "".join(chunk.text for chunk in generator.stream("a", max_new_tokens=40, ignore_eos=True, stop=(stop,)))
    assert streamed == stopped.text


def test_stop_token_ids_and_lengths(generator):
    free = generator.generate("b", max_new_tokens=12, ignore_eos=True)
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop_id = free.token_ids[5]
    stopped = generator.generate("b", max_new_tokens=12, ignore_eos=True, stop_token_ids=(stop_id,))
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop_id)] and stopped.stop == stop_id


def test_stop_text_holds_back_a_possible_stop():
    stops = StopText(["END"])
    assert stops.feed("abcE") == ("abc", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("X") == ("ENX", False)
    assert stops.feed("yyEND and more") == ("yy", True)
    assert stops.output == "abcENXyy"


def test_streaming_never_splits_a_multi_byte_character():
    tokenizer = byte_tokenizer()
    text = "héllo wörld 😀 ✓ done"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)  # several tokens for some characters
    decoder = IncrementalDecoder(tokenizer, [])
    pieces = [decoder.push(token) for token in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # a character's first bytes gave no text yet


def test_streamed_chunks_join_into_the_completion(generator):
    chunks = list(generator.stream(["q", "rs"], max_new_tokens=16, ignore_eos=True))
    completions = generator.generate(["q", "rs"], max_new_tokens=16, ignore_eos=True)
    for index, completion in enumerate(completions):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in mine) == completion.text
        assert [c.token for c in mine] == completion.token_ids and mine[-1].finish_reason == "length"


def test_prompts_that_do_not_fit(generator):
    with pytest.raises(UnknownToken, match="token id 999"):
        generator.generate([1, 999])
    long = [1] * (generator.context + 5)
    with pytest.raises(PromptTooLong, match="at most 95"):
        generator.generate(long)
    completion = generator.generate(long, on_long_prompt="truncate", max_new_tokens=3)
    assert completion.truncated == 6 and len(completion.prompt_ids) == generator.context - 1
    assert completion.finish_reason == "context" and len(completion.token_ids) == 2  # the second from a full context


def test_the_training_sample_is_cached_and_unchanged():
    """The loop's evaluation sample (engine.greedy_continuation) takes the cached generator, with the tokens
    the uncached reference gives, and leaves the model in training mode."""
    from tabula.runtime.engine import greedy_continuation

    model = tiny_model("mla", max_seq_len=16).train()
    prompt = [256, 10, 20, 30]
    cached = greedy_continuation(model, prompt, 20, torch.device("cpu"))
    assert cached == greedy_continuation(model, prompt, 20, torch.device("cpu"), cached=False) and model.training
