"""Records to conversations: what a chat or an instruction record must hold, and what it becomes.

A conversation is a list of messages `{"role": system | user | assistant, "content": str}`, the
form chat templates (Jinja or tabula's own) are written for. A record that cannot become one
raises RecordError with the reason; the source reading it adds the file and line and applies its
`on_error` policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tabula.schemas.chat import ROLES, ChatRecords, InstructionRecords

Message = dict[str, str]


class RecordError(ValueError):
    """A record that is not a conversation; `str()` is the reason, without the record's place."""


@dataclass(frozen=True)
class Conversation:
    """One record's conversation and where it came from (`origin`: "path:line" or "path: row N"),
    with the source's `loss_on` (assistant | last_assistant)."""

    messages: tuple[Message, ...]
    origin: str
    loss_on: str = "assistant"

    def trained(self) -> list[int]:
        """Indices of the messages trained on."""
        indices = [i for i, message in enumerate(self.messages) if message["role"] == "assistant"]
        return indices[-1:] if self.loss_on == "last_assistant" else indices

    def text(self) -> str:
        """The messages' contents joined by blank lines: what filters (length, dedup, regex) see."""
        return "\n\n".join(message["content"] for message in self.messages)


def fields_read(records: ChatRecords | InstructionRecords) -> list[str]:
    """The top-level record fields a records mapping reads (parquet reads those columns only)."""
    if isinstance(records, ChatRecords):
        return [records.messages_field]
    optional = [records.input_field, records.system_field]
    return [records.prompt_field, records.response_field, *(name for name in optional if name)]


def to_conversation(record: Any, records: ChatRecords | InstructionRecords, origin: str) -> Conversation:
    """The conversation a record holds; raises RecordError naming what is missing or wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"the record is {_kind(record)}, not an object")
    if isinstance(records, ChatRecords):
        messages = _chat_messages(record, records)
    else:
        messages = _instruction_messages(record, records)
    conversation = Conversation(tuple(messages), origin, getattr(records, "loss_on", "assistant"))
    if not conversation.trained():
        raise RecordError("no assistant message to train on")
    if not any(messages[i]["content"].strip() for i in conversation.trained()):
        raise RecordError("the assistant's messages are empty")
    return conversation


def _chat_messages(record: dict, records: ChatRecords) -> list[Message]:
    field = records.messages_field
    if field not in record:
        raise RecordError(f"no field {field!r} (found: {_fields(record)})")
    raw = record[field]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise RecordError(f"{field!r} is {_kind(raw)}, not a list of messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise RecordError(f"{where} is {_kind(message)}, not a message object")
        for name in (records.role_field, records.content_field):
            if name not in message:
                raise RecordError(f"{where} has no field {name!r} (found: {_fields(message)})")
        role, content = message[records.role_field], message[records.content_field]
        if not isinstance(role, str):
            raise RecordError(f"{where}.{records.role_field} is {_kind(role)}, not a role name")
        role = records.roles.get(role, role)
        if role not in ROLES:
            known = ", ".join([*ROLES, *(name for name in records.roles if name not in ROLES)])
            raise RecordError(f"{where} has role {role!r}, not one of {known} (map the file's role names with records.roles)")
        if not isinstance(content, str):
            raise RecordError(f"{where}.{records.content_field} is {_kind(content)}, not text")
        messages.append({"role": role, "content": content})
    return messages


def _instruction_messages(record: dict, records: InstructionRecords) -> list[Message]:
    prompt = _text(record, records.prompt_field, required=True)
    response = _text(record, records.response_field, required=True)
    extra = _text(record, records.input_field) if records.input_field else ""
    system = (_text(record, records.system_field) if records.system_field else "") or records.system or ""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{prompt}\n\n{extra}" if extra.strip() else prompt})
    messages.append({"role": "assistant", "content": response})
    return messages


def _text(record: dict, field: str, required: bool = False) -> str:
    if field not in record or record[field] is None:
        if required:
            raise RecordError(f"field {field!r} is null" if field in record else f"no field {field!r} (found: {_fields(record)})")
        return ""
    value = record[field]
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} is {_kind(value)}, not text")
    return value


def _fields(record: dict) -> str:
    return ", ".join(sorted(map(str, record))) or "none"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", str: "text", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
