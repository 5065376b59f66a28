"""The spec side of supervised data: records on files sources, `data.chat`, and the checks that
tie them to the format, the packing and the tokenizer, each reported at the line that is wrong."""

from __future__ import annotations

import pytest

from schema_texts import MINIMAL
from tabula.schemas.canonical import canonical_yaml
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec, load_spec_text

CHAT = MINIMAL.replace(
    "    stdlib: {kind: python_stdlib}\n",
    "    chat: {kind: files, paths: [chat.jsonl], format: jsonl, records: {kind: chat, roles: {human: user, gpt: assistant}}}\n"
    "  packing: {document_masking: true}\n"
    "  chat: {template: llama-3, max_tokens: 512, truncation: left}\n",
)


def only_error(text: str):
    with pytest.raises(SpecErrors) as raised:
        load_spec_text(text)
    (error,) = raised.value.errors
    return error


def test_a_chat_spec_loads_and_its_canonical_form_loads_back():
    spec = load_spec_text(CHAT)
    source = spec.data.sources["chat"]
    assert source.records.kind == "chat" and source.records.roles == {"human": "user", "gpt": "assistant"}
    assert spec.data.supervised_sources == ["chat"] and spec.data.chat.truncation == "left"
    assert load_spec_text(canonical_yaml(spec)) == spec  # text_field: text is written out, and accepted with records


def test_a_plain_spec_has_default_chat_settings_and_no_supervised_source():
    spec = load_spec_text(MINIMAL)
    assert spec.data.supervised_sources == [] and spec.data.chat.template == "auto" and spec.data.chat.max_tokens is None


@pytest.mark.parametrize(("old", "new", "path", "line", "message"), [
    ("  packing: {document_masking: true}\n", "", "data.packing.document_masking", None,
     "source 'chat' holds chat records: set document_masking: true"),
    ("format: jsonl, ", "", "data.sources.chat.records", 12, "chat records are read from format: jsonl or parquet, not text"),
    ("format: jsonl, ", "format: jsonl, text_field: body, ", "data.sources.chat.text_field", 12, "text_field names the text of plain records"),
    ("template: llama-3", "template: tokenizer", "data.chat.template", 14, "template: tokenizer reads the chat_template beside a kind: file"),
    ("template: llama-3", "template: vicuna", "data.chat.template", 14,
     "expected 'auto', 'tokenizer', 'chatml' or 'llama-3', found 'vicuna'"),
    ("truncation: left", "truncation: middle", "data.chat.truncation", 14, "expected 'left' or 'right', found 'middle'"),
    ("max_tokens: 512", "max_tokens: 1", "data.chat.max_tokens", 14, "greater than 1"),
    ("gpt: assistant", "gpt: bot", "data.sources.chat.records.roles.gpt", 12,
     "expected 'system', 'user' or 'assistant', found 'bot'"),
    ("records: {kind: chat,", "records: {kind: dialogue,", "data.sources.chat.records.kind", 12, "unknown kind 'dialogue' for data.sources.chat.records"),
])
def test_bad_chat_settings_name_their_path(old, new, path, line, message):
    assert old in CHAT
    error = only_error(CHAT.replace(old, new))
    assert error.dotted_path == path and message in error.message
    if line is not None:
        assert error.line == line


def test_the_shipped_chat_spec_validates(specs_dir):
    spec = load_spec(specs_dir / "finetune-chat.yaml")
    assert spec.data.supervised_sources == ["chat"] and spec.data.packing.document_masking
