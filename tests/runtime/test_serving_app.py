"""The OpenAI-compatible server, as the official `openai` client sees it: a live server on a free loopback
port (one for the module), a tiny model behind the continuous-batching scheduler."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serving_setup import CHATML, greedy_reference, make_decoder, one_thread, serve, tiny_model, tiny_tokenizer

from tabula.runtime.serving.app import ServedModel, create_app
from tabula.runtime.serving.scheduler import Scheduler, SchedulerConfig

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def setup():
    with one_thread():
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer.get_vocab_size(), max_seq_len=128)
        eos = tokenizer.token_to_id("<|endoftext|>")
        scheduler = Scheduler(make_decoder(model), lambda ids: tokenizer.decode(list(ids)),
                              SchedulerConfig(max_batch=4, max_queue=MAX_QUEUE, stop_token_ids=(eos,))).start()
        served = ServedModel("tiny", lambda text: tokenizer.encode(text).ids, model.max_seq_len,
                             chat=lambda messages: CHATML.render(messages, add_generation_prompt=True),
                             chat_stop_ids=(tokenizer.token_to_id("<|im_end|>"),), vocab_size=model.vocab_size)
        live = serve(create_app(scheduler, served, api_key=KEY), scheduler)
        try:
            yield live, model, tokenizer
        finally:
            live.close()


@pytest.fixture(scope="module")
def client(setup):
    return openai.OpenAI(base_url=setup[0].url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def expected(setup, prompt_ids, n, stop_ids=()):
    _, model, tokenizer = setup
    ids = greedy_reference(model, prompt_ids, n, stop_ids=(tokenizer.token_to_id("<|endoftext|>"), *stop_ids))
    return tokenizer.decode(ids), ids


def test_completion_is_the_models_greedy_continuation(setup, client):
    prompt = "def main(argv):"
    answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    text, ids = expected(setup, setup[2].encode(prompt).ids, 12)
    assert answer.choices[0].text == text
    assert answer.usage.completion_tokens == len(ids) and answer.usage.prompt_tokens == len(setup[2].encode(prompt).ids)
    assert answer.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    assert client.models.list().data[0].id == "tiny"


def test_streamed_completion_equals_the_whole_one(setup, client):
    prompt = "import os\n"
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_extra_sampling_fields_through_the_client(setup, client):
    """top_k, min_p and repetition_penalty (extra body fields) reach the inference core's sampler: a seeded
    request is reproducible and equals the Generator's tokens for the same parameters."""
    from tabula.runtime.inference import Generator, SamplingParams

    _, model, tokenizer = setup
    knobs = {"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.2}
    ask = lambda: client.completions.create(model="tiny", prompt="x = ", max_tokens=6, temperature=0.9, top_p=0.9, seed=11,
                                            extra_body=knobs).choices[0].text
    first = ask()
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=11, stop_token_ids=(tokenizer.token_to_id("<|endoftext|>"),),
                            **knobs)
    assert first == ask() == Generator(model, tokenizer).generate(tokenizer.encode("x = ").ids, params).text


def test_chat_uses_the_template_and_streams(setup, client):
    messages = [{"role": "system", "content": "be short"}, {"role": "user", "content": "class Reader:"}]
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    prompt_ids = setup[2].encode(CHATML.render(messages, add_generation_prompt=True)).ids
    text, _ = expected(setup, prompt_ids, 8, stop_ids=(setup[2].token_to_id("<|im_end|>"),))
    assert answer.choices[0].message.content == text and answer.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


@pytest.mark.parametrize("fields, where", [
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n: 2 answers"),
    ({"presence_penalty": 0.5}, "repetition_penalty"),
    ({"min_p": 1.0}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"frobnicate": 1}, "frobnicate: unknown field"),
    ({"prompt": [1, 2, 100000]}, "outside the vocabulary"),
    ({"prompt": "x" * 2000}, "the model's context is 128"),
])
def test_bad_fields_are_400_with_a_clear_json_error(setup, fields, where):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 4, **fields}
    response = httpx.post(setup[0].url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 400, response.text
    assert where in response.json()["error"]["message"]


@pytest.mark.parametrize("field", ["repetition_penalty", "temperature", "top_p"])
@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_nan_and_infinity_are_400_not_a_crash(setup, field, value):
    """Python's JSON reader takes NaN and Infinity; a sampling number must be finite."""
    body = f'{{"model": "tiny", "prompt": "hi", "max_tokens": 4, "{field}": {value}}}'
    response = httpx.post(setup[0].url + "/v1/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_errors_through_the_client(setup, client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=setup[0].url + "/v1", api_key="wrong", max_retries=0).completions.create(model="tiny", prompt="hi")
    assert httpx.get(setup[0].url + "/health").json()["status"] == "ok"  # open without a key


def test_a_full_queue_is_429_and_a_disconnect_frees_its_slot(setup, client):
    live = setup[0]
    scheduler = live.scheduler
    gate = threading.Event()
    real_step = scheduler.decoder.step

    def held_step(*args):  # hold the running batch so the queue fills
        gate.wait(30)
        return real_step(*args)

    scheduler.decoder.step = held_step
    try:
        streams = []
        while len(scheduler.waiting) < MAX_QUEUE and len(streams) < 4 + MAX_QUEUE:  # the step is held: newcomers queue up
            streams.append(httpx.stream("POST", live.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                        json={"model": "tiny", "prompt": "import", "max_tokens": 100, "stream": True}, timeout=30))
            assert streams[-1].__enter__().status_code == 200
            deadline = time.monotonic() + 10
            while len(scheduler.running) + len(scheduler.waiting) < len(streams) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert len(scheduler.waiting) == MAX_QUEUE and scheduler.running
        with pytest.raises(openai.RateLimitError, match="--max-queue"):
            client.completions.create(model="tiny", prompt="hi", max_tokens=4)
        held, steps = scheduler.pool.used, scheduler.counters.steps
        for stream in streams:  # every client leaves
            stream.__exit__(None, None, None)
    finally:
        gate.set()
        scheduler.decoder.step = real_step
    deadline = time.monotonic() + 20
    while (scheduler.running or scheduler.waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held > 0 and scheduler.pool.used == 0 and not scheduler.running and not scheduler.waiting
    assert scheduler.counters.steps - steps < 10  # dropped at once, not decoded to their 100 tokens
    answer = client.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)  # the server goes on
    assert answer.usage.completion_tokens >= 1


def test_a_non_streaming_client_that_leaves_cancels_its_sequence(setup):
    live = setup[0]
    scheduler = live.scheduler
    gate = threading.Event()
    real_step = scheduler.decoder.step
    scheduler.decoder.step = lambda *args: (gate.wait(30), real_step(*args))[1]
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its answer is being decoded
            httpx.post(live.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=1.0,
                       json={"model": "tiny", "prompt": "import", "max_tokens": 100})
        steps = scheduler.counters.steps
        time.sleep(0.6)  # the app notices the closed connection within its poll (0.25 s)
    finally:
        gate.set()
        scheduler.decoder.step = real_step
    deadline = time.monotonic() + 20
    while (scheduler.running or scheduler.waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scheduler.running and scheduler.pool.used == 0
    assert scheduler.counters.steps - steps < 10  # dropped, not decoded to its 100 tokens


def test_metrics_are_prometheus_text(setup, client):
    client.completions.create(model="tiny", prompt="from", max_tokens=3, temperature=0)
    text = httpx.get(setup[0].url + "/metrics").text
    for name in ("tabula_requests_total{endpoint=\"/v1/completions\",status=\"200\"}", "tabula_queue_length", "tabula_running_batch",
                 "tabula_tokens_per_second", "tabula_time_to_first_token_seconds_bucket", "tabula_request_latency_seconds_count",
                 "tabula_cache_blocks_used"):
        assert name in text
    assert 'status="401"' in text and 'status="429"' in text
    json.dumps(text)  # plain text


def test_a_short_load_test_finishes_every_request(setup):
    from tabula.runtime.serving.loadtest import mix, run_load

    requests = mix(8, (3, 9), (4, 8), vocab=setup[1].vocab_size)
    report = run_load(setup[0].url, "tiny", requests, concurrency=MAX_QUEUE, api_key=KEY)  # more could fill the queue: 429
    assert report.errors == [] and len(report.latency) == 8 and len(report.ttft) == 8
    assert 0 < report.output_tokens <= 8 * 8  # the end-of-text token may end one early
    row = report.row()
    assert row["ttft_p50"] <= row["latency_p99"] and row["tok/s"] > 0
