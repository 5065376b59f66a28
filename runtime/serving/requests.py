"""The OpenAI request bodies the server takes, validated: a bad field is a 400 with the field's name.

Fields OpenAI defines that the server cannot honour (n > 1, logprobs, echo, best_of, logit_bias, and
presence/frequency penalties: OpenAI's are additive, per occurrence, and no processor of the inference
core computes them) are refused with the reason rather than ignored or mapped onto something else.
`top_k`, `min_p` and `repetition_penalty` (CTRL's multiplicative penalty, as transformers and vLLM take
it) are not OpenAI's; vLLM and others take them as extra body fields, so do we (the openai client sends
them with `extra_body={...}`). Sampling itself is the inference core's (runtime/inference/sampling.py).
Torch-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .protocol import SamplingParams


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(description="The served model's name (GET /v1/models lists it).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set of tokens reaching this probability.")
    top_k: int = Field(0, ge=0, description="Only the k most likely tokens (0: all). Not OpenAI's: an extra body field.")
    min_p: float = Field(0.0, ge=0.0, lt=1.0, description="Drops tokens less likely than min_p x the likeliest's "
                         "probability (0: none). Not OpenAI's: an extra body field.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="> 1 makes the prompt's and the output's tokens less likely "
                                      "(CTRL's: a positive logit divided by it, a negative one multiplied; 1: off). "
                                      "Not OpenAI's: an extra body field.")
    seed: int | None = Field(None, description="Makes a sampled answer reproducible.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the answer (not included).")
    stream: bool = Field(False, description="Server-sent events, one a token.")
    stream_options: dict[str, Any] | None = Field(None, description="{include_usage: true}: a last chunk with the usage.")
    n: int = Field(1, description="Answers a request: 1 only.")
    user: str | None = Field(None, description="The end user's id (accepted, unused).")
    presence_penalty: float = Field(0.0, description="Not supported: 0 only (see repetition_penalty).")
    frequency_penalty: float = Field(0.0, description="Not supported: 0 only (see repetition_penalty).")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: null or {} only.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop strings, found {len(value)}")
        return value

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        if self.n != 1:
            raise ValueError(f"n: {self.n} answers a request are not supported: send n=1")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty (OpenAI's additive penalties) are not supported: leave "
                             "them 0; repetition_penalty (multiplicative, > 1 penalises) is, as an extra body field")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def params(self, max_tokens: int, stop_token_ids: tuple[int, ...] = ()) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, repetition_penalty=self.repetition_penalty, seed=self.seed,
                              stop=self.stops, stop_token_ids=stop_token_ids)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] = Field(description="A text, a list of one text, or token ids.")
    max_tokens: int = Field(16, ge=1, description="New tokens at most.")
    echo: bool = Field(False, description="Not supported: false only.")
    logprobs: int | None = Field(None, description="Not supported: null only.")
    best_of: int | None = Field(None, description="Not supported: null or 1 only.")
    suffix: str | None = Field(None, description="Not supported: null only.")

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ValueError(f"prompt: one prompt a request, found {len(self.prompt)}")
        if self.echo or self.logprobs is not None or (self.best_of not in (None, 1)) or self.suffix is not None:
            raise ValueError("echo, logprobs, best_of and suffix are not supported")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str | list[dict[str, Any]] = Field(description="Text, or a list of {type: text, text} parts.")
    name: str | None = Field(None, description="The author's name (accepted, unused).")

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("content parts: only {type: text, text: ...} parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most (None: up to the context).")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    logprobs: bool | None = Field(None, description="Not supported: null or false only.")

    @model_validator(mode="after")
    def _check(self) -> ChatRequest:
        if self.logprobs:
            raise ValueError("logprobs is not supported")
        for message in self.messages:
            message.text  # raises on parts it cannot read
        return self

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
