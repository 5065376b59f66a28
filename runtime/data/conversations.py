"""The pipeline's side of supervised data: conversations rendered by the chat template into the
spool, the template's special tokens in the tokenizer, and the counts `tabula prepare` reports.

A spooled conversation is one JSON object `{"text": rendered text, "spans": [[start, end], ...]}`
(the trained character spans); the tokenizer workers (tokenize_worker.encode_chat_chunk) turn it
into tokens and a loss mask, cut to `data.chat.max_tokens`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .chat_template import ChatTemplate, resolve_template, strip_special
from .records import Conversation

EXAMPLES = 5  # skipped records listed by file and line in the report; the rest are counted


class ChatData:
    """`data.chat` for one prepare: the resolved template and what it added to the tokenizer."""

    def __init__(self, data: Any, base_dir: Path):
        self.spec = data.chat
        self.sources = data.supervised_sources
        self.template: ChatTemplate = resolve_template(data, base_dir)
        self.added_tokens: list[str] = []

    def key(self) -> dict[str, Any]:
        """The fingerprint's part: the template (its text, for a Jinja one), max_tokens, truncation."""
        return {"template": self.template.key(), "max_tokens": self.spec.max_tokens, "truncation": self.spec.truncation}

    def spool_entry(self, conversation: Conversation) -> tuple[str, int]:
        """(the spool's JSON for the conversation, its rendered characters); raises RecordError."""
        rendered = self.template.render_trained(conversation)
        return json.dumps({"text": rendered.text, "spans": rendered.spans}, ensure_ascii=False), len(rendered.text)

    def sample_text(self, entry: str) -> str:
        """A spooled conversation's words for training a tokenizer (its special tokens left out)."""
        return strip_special(json.loads(entry)["text"], self.template.special_tokens)

    def add_special_tokens(self, tokenizer: Tokenizer) -> Tokenizer:
        """Add the template's special tokens a loaded tokenizer lacks (remembered for the report)."""
        missing = [token for token in self.template.special_tokens if tokenizer.token_to_id(token) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
            self.added_tokens = missing
        return tokenizer

    def report(self) -> dict[str, Any]:
        return {
            "template": self.template.name, "template_from": self.template.describe(), "added_tokens": self.added_tokens,
            "max_tokens": self.spec.max_tokens, "truncation": self.spec.truncation, "sources": self.sources,
        }


class SkipLog:
    """A source's skipped files and records: how many, and the first few messages (file:line: reason)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, message: str) -> None:
        """Count a warning `source 'name': skipped <file:line: reason>`; keep the first few reasons."""
        self.count += 1
        if len(self.first) < EXAMPLES:
            self.first.append(message.split(": skipped ", 1)[-1])

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "first": list(self.first)}
