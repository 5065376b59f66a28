"""Supervised (chat and instruction) data: how a record becomes a conversation, and how a
conversation becomes tokens (`data.chat`: the template, the maximum length, the truncation side).

A files source with `records:` reads conversations instead of plain text; the model is trained on
the assistant's tokens only (the others are masked out of the loss), and packed conversations do
not attend to each other (`data.packing.document_masking` must be on).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import SpecModel

ROLES = ("system", "user", "assistant")
Role = Literal["system", "user", "assistant"]
# The templates tabula writes itself (runtime/data/chat_template.py registers each under this name).
NAMED_TEMPLATES = ("chatml", "llama-3")


class ChatRecords(SpecModel):
    kind: Literal["chat"] = Field(
        description="Each record holds a conversation: a list of messages, each with a role (system, user, assistant) and its text."
    )
    messages_field: str = Field(default="messages", min_length=1, description="The record field holding the list of messages.")
    role_field: str = Field(default="role", min_length=1, description="The message field naming its role (ShareGPT files: from).")
    content_field: str = Field(default="content", min_length=1, description="The message field holding its text (ShareGPT files: value).")
    roles: dict[str, Role] = Field(
        default_factory=dict,
        description="The file's role names mapped to system, user and assistant (ShareGPT: {human: user, gpt: assistant}); "
                    "names not listed must be system, user or assistant already.",
    )
    loss_on: Literal["assistant", "last_assistant"] = Field(
        default="assistant",
        description="Which tokens are trained on: every assistant message, or only the last one; everything else is masked out of the loss.",
    )


class InstructionRecords(SpecModel):
    kind: Literal["instruction"] = Field(
        description="Each record holds one instruction and its response (Alpaca style); it becomes a user and an assistant message."
    )
    prompt_field: str = Field(default="prompt", min_length=1, description="The record field holding the instruction (the user's message).")
    response_field: str = Field(default="response", min_length=1, description="The record field holding the answer (the assistant's message, trained on).")
    input_field: str | None = Field(
        default=None, min_length=1,
        description="A record field with more input for the instruction (Alpaca: input), appended to it after a blank line when not empty; null: none.",
    )
    system_field: str | None = Field(
        default=None, min_length=1, description="A record field holding a system message; null: none (or `system` for every record)."
    )
    system: str | None = Field(
        default=None, description="A system message for every record (where system_field is null, or the record's is empty); null: none."
    )


Records = Annotated[Union[ChatRecords, InstructionRecords], Field(discriminator="kind")]


class ChatFormat(SpecModel):
    template: Literal["auto", "tokenizer", "chatml", "llama-3"] = Field(
        default="auto",
        description="How a conversation is written as text. tokenizer: the tokenizer's own chat_template (a Jinja template in "
                    "chat_template.jinja or tokenizer_config.json beside a kind: file tokenizer.json, rendered in a sandbox); "
                    "chatml (<|im_start|>role ... <|im_end|>) and llama-3 (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>): "
                    "written by tabula, their special tokens added to the tokenizer where it lacks them; "
                    "auto: the tokenizer's own where it has one, else chatml (tabula prepare reports which).",
    )
    max_tokens: int | None = Field(
        default=None, gt=1,
        description="Longest conversation in tokens; a longer one is cut on the `truncation` side (one with no trained token "
                    "left is dropped and counted). null: no limit. Conversations are packed one after another into the "
                    "curriculum's windows, so one longer than seq_len (or lying across a window's end) is split across "
                    "windows: max_tokens at most seq_len keeps most conversations whole.",
    )
    truncation: Literal["left", "right"] = Field(
        default="right",
        description="Where a conversation longer than max_tokens is cut: right drops its end (keeps the system message and the "
                    "first turns), left drops its beginning (keeps the last answer).",
    )

