"""The continuous-batching scheduler, turn by turn (no thread, no HTTP): sequences of different lengths join
the running batch while others decode and leave it when done, each one's greedy output equal to its own
single-request output exactly; the cache pool at its limit makes requests wait or preempts, never fails."""

from __future__ import annotations

import pytest
import torch
from serving_setup import MLA, greedy_reference, make_decoder, one_thread, tiny_model

from tabula.runtime.serving.protocol import GenerationRequest, QueueFull, SamplingParams, TooLong
from tabula.runtime.serving.scheduler import Scheduler, SchedulerConfig

VOCAB = 97


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model(VOCAB, max_seq_len=64)


def prompts(n: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (length,), generator=generator).tolist() for length in (3, 11, 1, 7, 19, 5)[:n]]


class Collector:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.text = ""

    def __call__(self, event) -> None:
        assert self.finish is None, "an event after the end"
        if event.token_id is not None:
            self.tokens.append(event.token_id)
        self.text += event.text
        self.finish = event.finish_reason


def submit(scheduler, prompt, max_tokens, **params):
    out = Collector()
    scheduler.submit(GenerationRequest(tuple(prompt), SamplingParams(max_tokens=max_tokens, temperature=0.0, **params)), out)
    return out


def run_until_idle(scheduler, limit=500):
    for _ in range(limit):
        if not scheduler.running and not scheduler.waiting:
            return
        scheduler.turn()
    raise AssertionError("the scheduler did not finish")


@pytest.fixture(scope="module", params=["gqa", "window", "mla"])
def any_model(request, model):
    """The scheduler's batch over every cache the inference core keeps: keys and values, a rolling window, MLA's latent."""
    if request.param == "gqa":
        yield model
        return
    with one_thread():
        yield tiny_model(VOCAB, max_seq_len=64, window=6) if request.param == "window" else tiny_model(VOCAB, max_seq_len=64, attention=MLA)


def test_sequences_join_and_leave_and_each_equals_its_single_request_greedy_output(any_model):
    model = any_model
    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=4))
    lengths = [9, 4, 14, 6, 2, 11]
    outs = [submit(scheduler, p, n) for p, n in zip(prompts(2), lengths)]  # two start together
    scheduler.turn()
    scheduler.turn()
    outs += [submit(scheduler, p, n) for p, n in zip(prompts(6)[2:4], lengths[2:4])]  # join a running batch
    batches = []
    for _ in range(3):
        scheduler.turn()
        batches.append(len(scheduler.running))
    outs += [submit(scheduler, p, n) for p, n in zip(prompts(6)[4:], lengths[4:])]  # more than max_batch: some wait
    assert len(scheduler.waiting) >= 1 or len(scheduler.running) == 4
    run_until_idle(scheduler)
    for prompt, n, out in zip(prompts(6), lengths, outs):
        assert out.tokens == greedy_reference(model, prompt, n), f"prompt of {len(prompt)} tokens"
        assert out.finish == "length"
    assert max(batches) > 2  # newcomers decoded together with the running ones
    assert scheduler.pool.used == 0 and scheduler.cache is None


def test_stop_tokens_end_each_sequence_on_its_own(model):
    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=4))
    prompt = prompts(1)[0]
    reference = greedy_reference(model, prompt, 12)
    stop = reference[5]
    stopped = submit(scheduler, prompt, 12, stop_token_ids=(stop,))
    free = submit(scheduler, prompt, 12)
    run_until_idle(scheduler)
    assert stopped.tokens == reference[: reference.index(stop)] and stopped.finish == "stop"
    assert free.tokens == reference and free.finish == "length"


def test_a_full_pool_makes_requests_wait_and_preempts_never_fails(model):
    # 6 blocks of 4 tokens; three sequences that grow to 4, 4 and 5 blocks: they cannot all hold theirs at once
    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=8, cache_tokens=24, block_size=4))
    cases = [(p, 12) for p in (prompts(4)[0], prompts(4)[2], prompts(6)[5])]  # prompts of 3, 1 and 5 tokens
    outs = [submit(scheduler, p, n) for p, n in cases]
    peak, waited = 0, False
    for _ in range(200):
        if not scheduler.running and not scheduler.waiting:
            break
        scheduler.turn()
        peak = max(peak, scheduler.pool.used)
        waited |= bool(scheduler.waiting) and len(scheduler.running) < 8  # room in the batch, none in the pool
        assert scheduler.pool.used <= scheduler.pool.n_blocks
    assert peak == scheduler.pool.n_blocks and scheduler.counters.preempted >= 1 and waited
    for (prompt, n), out in zip(cases, outs):  # recomputed after preemption, the same tokens
        assert out.tokens == greedy_reference(model, prompt, n) and out.finish == "length"
    assert scheduler.pool.used == 0
    with pytest.raises(TooLong, match="cache pool has 6"):  # could never fit: refused at once
        scheduler.submit(GenerationRequest((1,) * 10, SamplingParams(max_tokens=20)), Collector())


def test_cancelled_sequences_leave_and_free_their_blocks(model):
    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=4, max_queue=1))
    first = Collector()
    handle = scheduler.submit(GenerationRequest(tuple(prompts(2)[1]), SamplingParams(max_tokens=40, temperature=0.0)), first)
    scheduler.turn()
    scheduler.turn()
    assert scheduler.pool.used > 0 and len(scheduler.running) == 1
    queued = scheduler.submit(GenerationRequest((1, 2), SamplingParams(max_tokens=4)), Collector())
    with pytest.raises(QueueFull, match="--max-queue 1"):
        scheduler.submit(GenerationRequest((1, 2), SamplingParams(max_tokens=4)), Collector())
    handle.cancel()
    queued.cancel()
    scheduler.turn()
    assert first.finish == "cancelled" and len(first.tokens) < 40
    assert scheduler.pool.used == 0 and not scheduler.running and not scheduler.waiting


def test_a_failing_step_ends_its_sequences_in_error_and_the_scheduler_goes_on(model):
    decoder = make_decoder(model)
    scheduler = Scheduler(decoder, lambda ids: "", SchedulerConfig(max_batch=4))
    broken = submit(scheduler, prompts(1)[0], 8)
    scheduler.turn()
    real_step = decoder.step
    decoder.step = lambda *args: (_ for _ in ()).throw(RuntimeError("device lost"))
    scheduler.turn()
    decoder.step = real_step
    assert broken.finish == "error" and scheduler.pool.used == 0
    after = submit(scheduler, prompts(1)[0], 5)
    run_until_idle(scheduler)
    assert after.tokens == greedy_reference(model, prompts(1)[0], 5)


def test_seeded_sampling_is_reproducible_whatever_runs_beside_it(model):
    def sampled(company: int) -> list[int]:
        scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=4))
        out = Collector()
        params = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=20, seed=123)
        scheduler.submit(GenerationRequest(tuple(prompts(1)[0]), params), out)
        for prompt in prompts(company + 1)[1:]:
            submit(scheduler, prompt, 6)
        run_until_idle(scheduler)
        return out.tokens

    alone = sampled(0)
    assert len(alone) == 8 and sampled(3) == alone


def test_sampling_is_the_inference_cores(model):
    """A sampled request (min_p, repetition penalty, top-k/p, seed) gives the tokens `tabula generate`'s
    Generator gives for the same prompt and parameters: the server samples through the inference core."""
    from tabula.runtime.inference import Generator
    from tabula.runtime.inference import SamplingParams as CoreParams

    prompt = prompts(2)[1]
    knobs = dict(temperature=0.8, top_p=0.95, top_k=30, min_p=0.05, repetition_penalty=1.3, seed=5)
    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=4))
    out = Collector()
    scheduler.submit(GenerationRequest(tuple(prompt), SamplingParams(max_tokens=10, **knobs)), out)
    submit(scheduler, prompts(1)[0], 6)  # company in the batch changes nothing
    run_until_idle(scheduler)
    expected = Generator(model).generate(prompt, CoreParams(max_new_tokens=10, ignore_eos=True, **knobs)).token_ids
    assert out.tokens == expected and len(expected) == 10


def test_refused_sampling_values_are_serving_errors(model):
    from tabula.runtime.serving.protocol import ServingError

    scheduler = Scheduler(make_decoder(model), lambda ids: "", SchedulerConfig(max_batch=2))
    with pytest.raises(ServingError, match="min_p"):
        scheduler.submit(GenerationRequest((1, 2), SamplingParams(max_tokens=4, min_p=1.5)), Collector())
