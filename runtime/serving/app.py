"""The OpenAI-compatible HTTP app (FastAPI): /v1/completions, /v1/chat/completions (stream: true as
server-sent events), /v1/models, /health and /metrics (Prometheus text).

Written against the `Engine` protocol (protocol.py): requests become GenerationRequests, the engine's
events come back on its thread and are handed to the request's event loop. Errors are OpenAI's JSON
shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad field, 401 without the API key when
one is set, 404 for another model's name, 429 when the queue is full. A client that disconnects, streaming
or not, cancels its sequence: the scheduler drops it and frees its cache blocks at its next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .metrics import Metrics
from .protocol import Engine, Event, GenerationRequest, Handle, ServingError
from .requests import ChatRequest, CompletionRequest

DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


@dataclass(frozen=True)
class ServedModel:
    """What the app knows of the model: its name, its tokenizer's encode, its chat template (messages ->
    prompt text with the generation prompt; None: the model has none), the end-of-turn tokens a chat
    answer stops on, its context and its vocabulary (token ids in a prompt are checked against it)."""

    name: str
    encode: Callable[[str], list[int]]
    max_len: int
    chat: Callable[[list[dict[str, str]]], str] | None = None
    chat_stop_ids: tuple[int, ...] = ()
    vocab_size: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))


def error_body(message: str, status: int, code: str | None = None, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(status, "invalid_request_error"
                                                                                                   if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {message}", None
    if first.get("type") == "extra_forbidden":
        return f"{'.'.join(where)}: unknown field", ".".join(where)
    return (f"{'.'.join(where)}: {message}" if where else message), (".".join(where) or None)


class _Stream:
    """One request's events, moved from the scheduler's thread onto the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class _Gate:
    """ASGI middleware: the API key on /v1/*, and each /v1/ answer's status counted. Plain ASGI rather than
    Starlette's BaseHTTPMiddleware, which wraps `receive` and would hide a client's disconnect from the app."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.expected is not None:
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                self.metrics.request(path, 401)
                await error_body("a valid API key is required: Authorization: Bearer KEY", 401, "invalid_api_key")(scope, receive, send)
                return
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(path, status)


def create_app(engine: Engine, model: ServedModel, *, api_key: str | None = None, metrics: Metrics | None = None) -> FastAPI:
    """The app serving `model` through `engine`; `api_key`: required as `Authorization: Bearer KEY` on /v1/*."""
    metrics = metrics or Metrics()
    app = FastAPI(title="tabula", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.engine = engine

    app.add_middleware(_Gate, api_key=api_key, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_body(message, 400, "invalid_request", param)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name, **engine.stats()}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engine.stats()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": model.created, "owned_by": "tabula",
                                            "max_model_len": model.max_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.model != model.name:
            return _unknown_model(body.model)
        if isinstance(body.prompt, list) and (not body.prompt or isinstance(body.prompt[0], int)):
            ids = [int(i) for i in body.prompt]
        else:
            ids = model.encode(str(body.prompt[0]) if isinstance(body.prompt, list) else body.prompt)
        return await _generate(request, body, ids, body.params(body.max_tokens), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.model != model.name:
            return _unknown_model(body.model)
        if model.chat is None:
            return error_body(f"{model.name} has no chat template: use /v1/completions", 400, "no_chat_template")
        prompt = model.chat([{"role": m.role, "content": m.text} for m in body.messages])
        ids = model.encode(prompt)
        limit = body.limit if body.limit is not None else max(1, model.max_len - len(ids))
        return await _generate(request, body, ids, body.params(limit, model.chat_stop_ids), chat=True)

    def _unknown_model(name: str) -> JSONResponse:
        return error_body(f"the model {name!r} is not served here; this server serves {model.name!r}", 404, "model_not_found", "model")

    async def _generate(request: Request, body: Any, ids: list[int], params: Any, *, chat: bool):
        stream = _Stream(asyncio.get_running_loop())
        vocab_error = _check_ids(ids)
        if vocab_error:
            return error_body(vocab_error, 400, "invalid_request", "prompt")
        try:
            handle = engine.submit(GenerationRequest(tuple(ids), params), stream)
        except ServingError as error:
            return error_body(str(error), error.status, error.code)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model.name}
        if body.stream:
            return StreamingResponse(_sse(handle, stream, meta, chat, body.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, handle, stream, meta, chat)

    def _check_ids(ids: Sequence[int]) -> str | None:
        vocab = model.vocab_size
        bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
        return f"prompt: token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1 if vocab else '?'})" if bad else None

    def _observe(handle: Handle, event: Event) -> None:
        if event.token_id is not None:
            metrics.tokens(1)
        if event.done:
            now = time.monotonic()
            ttft = handle.first_token_at - handle.submitted_at if handle.first_token_at is not None else None
            metrics.finished(handle.prompt_tokens, ttft, now - handle.submitted_at)

    async def _complete(request: Request, handle: Handle, stream: _Stream, meta: dict[str, Any], chat: bool):
        text: list[str] = []
        while True:
            try:
                event = await asyncio.wait_for(stream.queue.get(), DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    handle.cancel()
                    return JSONResponse({}, status_code=499)
                continue
            _observe(handle, event)
            text.append(event.text)
            if event.done:
                break
        if event.finish_reason == "error":
            return error_body(f"generation failed: {event.error}", 500, "generation_failed")
        answer = "".join(text)
        usage = _usage(handle)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": None, "finish_reason": event.finish_reason}
            return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": event.finish_reason}
        return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}

    async def _sse(handle: Handle, stream: _Stream, meta: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

        try:
            if chat:
                yield chunk("", None, first=True)
            while True:
                event = await stream.queue.get()
                _observe(handle, event)
                if event.finish_reason == "error":
                    yield f"data: {json.dumps({'error': {'message': f'generation failed: {event.error}', 'type': 'server_error'}})}\n\n"
                    break
                if event.done:
                    if event.text:
                        yield chunk(event.text, None)
                    yield chunk(None, event.finish_reason)
                    if include_usage:
                        yield f"data: {json.dumps({**meta, 'object': kind, 'choices': [], 'usage': _usage(handle)})}\n\n"
                    break
                yield chunk(event.text, None)  # a chunk a token, also while its text is held back ('')
            yield "data: [DONE]\n\n"
        finally:  # the client left (the generator is closed early) or the answer ended: either way the sequence goes
            handle.cancel()

    return app


def _usage(handle: Handle) -> dict[str, int]:
    return {"prompt_tokens": handle.prompt_tokens, "completion_tokens": handle.completion_tokens,
            "total_tokens": handle.prompt_tokens + handle.completion_tokens}
