"""A chat over a Generator: what `tabula chat`'s playground talks to (tui/chat.py's ChatSession).

    session = load_chat("runs/chat-run", quantize=None)
    for piece in session.reply([("user", "Hello")], temperature=0.8, top_p=0.95, max_new_tokens=64):
        piece.text, piece.tokens, piece.cache_bytes

A model trained on conversations (a spec with chat or instruction sources) is prompted through its chat
template (runtime/data/chat_template.py) with the generation prompt, and its answer ends at the template's
special tokens; any other model continues the conversation's text as it stands (the turns joined). A long
conversation keeps its last tokens (the prompt is truncated to the context).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .generator import Generator
from .sampling import SamplingParams


@dataclass(frozen=True)
class Reply:
    """A streamed piece of an answer: `text` (new characters), `tokens` generated so far in this answer,
    `cache_bytes` the KV cache's bytes now."""

    text: str
    tokens: int
    cache_bytes: int


class ChatSession:
    """Answers a conversation with `generator`, through `template` (a ChatTemplate) when given. `name`: what
    describe() calls the model."""

    def __init__(self, generator: Generator, template: Any = None, name: str = "model") -> None:
        self.generator, self.template, self.name = generator, template, name
        self._cancel = threading.Event()
        self.stop_ids: tuple[int, ...] = ()
        if template is not None and generator.tokenizer is not None:
            ids = (generator.tokenizer.token_to_id(token) for token in template.special_tokens)
            self.stop_ids = tuple(i for i in ids if i is not None)

    def describe(self) -> str:
        model = self.generator.model
        parameters = sum(p.numel() for p in model.parameters())
        how = f"chat template {self.template.name}" if self.template is not None else "no chat template: the conversation is continued as text"
        return f"{self.name} · {parameters / 1e6:.1f}M parameters · context {self.generator.context} tokens · {how}"

    def prompt(self, history: Sequence[tuple[str, str]]) -> str:
        """The conversation as the model's prompt."""
        if self.template is not None:
            return str(self.template.render([{"role": role, "content": text} for role, text in history], add_generation_prompt=True))
        return "".join(text for _, text in history)

    def reply(self, history: Sequence[tuple[str, str]], *, temperature: float, top_p: float,
              max_new_tokens: int) -> Iterator[Reply]:
        """Streams the answer to `history` ((role, text) pairs, the user's last). Raises RunInputError for
        a prompt the generator refuses, ValueError for sampling settings out of range."""
        self._cancel.clear()
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop_token_ids=self.stop_ids)
        generator = self.generator
        sequence = generator.sequences([self.prompt(history)], params, on_long_prompt="truncate")[0]
        decoder = generator.decoder
        cache = decoder.new_cache(1)
        logits = decoder.prefill(cache, [sequence.prompt_ids])
        while True:
            chunk = sequence.choose(logits[0])
            yield Reply(chunk.text, len(sequence.tokens), cache.nbytes())
            if sequence.finished or self._cancel.is_set():
                return
            if int(cache.lengths[0]) >= decoder.max_len:
                yield Reply(sequence.end("context").text, len(sequence.tokens), cache.nbytes())
                return
            logits = decoder.step(cache, [sequence.tokens[-1]])

    def cancel(self) -> None:
        """Ends a reply in progress after its next token."""
        self._cancel.set()


def load_chat(run_dir: str | os.PathLike[str], *, device: str = "cpu", quantize: str | None = None,
              group_size: int | None = None) -> ChatSession:
    """A ChatSession over the trained model of `run_dir` (load_generator's sources), with the run's chat
    template where it was trained on conversations. Raises RunInputError as load_generator does."""
    from .load import load_generator

    generator = load_generator(run_dir, device=device, quantize=quantize, group_size=group_size)
    return ChatSession(generator, _template(Path(run_dir)), name=Path(run_dir).name)


def _template(path: Path) -> Any:
    """The chat template of a run trained on conversations, else None."""
    from tabula.schemas.loader import load_run_spec
    from tabula.schemas.rundir_protocol import RESOLVED_FILE

    from ..data.chat_template import resolve_template

    run_dir = next((folder for folder in (path, path.parent.parent) if (folder / RESOLVED_FILE).is_file()), None)
    if run_dir is None:
        return None
    spec = load_run_spec(run_dir)
    if not spec.data.supervised_sources:
        return None
    return resolve_template(spec.data, spec.base_dir)
