"""Chat templates: a conversation written as the text a model is trained on, with the spans of
that text it is trained on (the assistant's messages and their end-of-turn token).

Two named templates are written by tabula (the TEMPLATES registry: `chatml`, `llama-3`, their exact
strings as Qwen and Meta publish them); the tokenizer's own is a Jinja template, read from
`chat_template.jinja` or `tokenizer_config.json` beside a `kind: file` tokenizer.json and rendered
in jinja2's immutable sandbox (a spec is data, never code: a template reaches no Python object and
no file). A Jinja template's trained spans are found by rendering each assistant message's prefix
with the generation prompt, then the conversation up to and including that message: the text
between the two is the assistant's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from tabula.schemas.registry import Registry

from .errors import DataError
from .records import Conversation, Message, RecordError

WHERE = ("data", "chat", "template")
TEMPLATES: Registry[type] = Registry("chat template")  # name -> template class (no arguments)


@dataclass(frozen=True)
class Rendered:
    """A conversation as text, and the [start, end) character spans of it that are trained on."""

    text: str
    spans: tuple[tuple[int, int], ...]


class ChatTemplate(Protocol):
    name: str  # chatml, llama-3, tokenizer
    special_tokens: tuple[str, ...]  # strings the template writes that must be single tokens

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The messages as text; with the generation prompt, ready for the assistant's answer."""

    def render_trained(self, conversation: Conversation) -> Rendered:
        """The conversation as text with its trained spans; raises RecordError where it cannot be written."""

    def key(self) -> dict[str, Any]:
        """What identifies the template in the data fingerprint."""

    def describe(self) -> str:
        """One line for tabula prepare's report."""


class _Written:
    """A template tabula writes itself, message by message: `head` + content + `end` + `gap`,
    where the assistant's content and `end` (its end-of-turn token) are trained on."""

    name = ""
    special_tokens: tuple[str, ...] = ()
    begin = ""  # once, before the first message
    end = ""
    gap = ""

    def head(self, role: str) -> str:
        raise NotImplementedError

    def content(self, text: str) -> str:
        return text

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        text = self.begin + "".join(self.head(m["role"]) + self.content(m["content"]) + self.end + self.gap for m in messages)
        return text + self.head("assistant") if add_generation_prompt else text

    def render_trained(self, conversation: Conversation) -> Rendered:
        trained = set(conversation.trained())
        parts, spans, position = [self.begin], [], len(self.begin)
        for index, message in enumerate(conversation.messages):
            head, body = self.head(message["role"]), self.content(message["content"]) + self.end
            if index in trained:
                spans.append((position + len(head), position + len(head) + len(body)))
            parts += [head, body, self.gap]
            position += len(head) + len(body) + len(self.gap)
        return Rendered("".join(parts), tuple(spans))

    def key(self) -> dict[str, Any]:
        return {"name": self.name}

    def describe(self) -> str:
        return self.name


@TEMPLATES.register("chatml")
class ChatML(_Written):
    """`<|im_start|>role\\ncontent<|im_end|>\\n` (OpenAI's ChatML, Qwen's chat models); no BOS."""

    name = "chatml"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    end = "<|im_end|>"
    gap = "\n"

    def head(self, role: str) -> str:
        return f"<|im_start|>{role}\n"


@TEMPLATES.register("llama-3")
class Llama3(_Written):
    """Meta's Llama 3 Instruct: `<|begin_of_text|>` once, then
    `<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`, contents trimmed as Meta's template does."""

    name = "llama-3"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    begin = "<|begin_of_text|>"
    end = "<|eot_id|>"

    def head(self, role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    def content(self, text: str) -> str:
        return text.strip()


class JinjaTemplate:
    """A Hugging Face `chat_template` (Jinja) rendered in an immutable sandbox, with the tokenizer's
    special tokens (bos_token, eos_token, ...) as variables, as transformers renders it."""

    name = "tokenizer"

    def __init__(self, source: str, context: dict[str, str], origin: str):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source, self.context, self.origin = source, dict(context), origin
        self._errors = (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_tag()], undefined=jinja2.Undefined,
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        try:
            self.template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise DataError(f"the chat template in {origin} does not parse: line {error.lineno}: {error.message}", path=WHERE) from None
        self.special_tokens = ()  # its tokens (bos_token, <|im_start|>, ...) are the tokenizer's own already

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        try:
            return self.template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                        tools=None, documents=None, **self.context)
        except self._errors as error:
            raise RecordError(f"the chat template of {self.origin} refused it: {_first_line(error)}") from None

    def render_trained(self, conversation: Conversation) -> Rendered:
        messages = conversation.messages
        text = self.render(messages)
        spans = []
        for index in conversation.trained():
            prompt = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1])
            if not upto.startswith(prompt) or not text.startswith(upto):
                raise RecordError(
                    f"the chat template of {self.origin} writes message {index} differently once later messages follow "
                    "(its trained tokens cannot be told apart): name a template instead (data.chat.template: chatml or llama-3)"
                )
            end = len(upto)
            while end > len(prompt) and upto[end - 1].isspace():  # the line break after the end-of-turn token is not the answer
                end -= 1
            spans.append((len(prompt), end))
        return Rendered(text, tuple(spans))

    def key(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": hashlib.sha256(self.source.encode()).hexdigest(), "context": self.context}

    def describe(self) -> str:
        return f"the tokenizer's ({self.origin})"


def resolve_template(data: Any, base_dir: Path) -> ChatTemplate:
    """The template `data.chat.template` names: a named one, or the tokenizer's own (auto: where
    it has one, else chatml). Raises DataError where `tokenizer` finds none or it does not parse."""
    choice = data.chat.template
    if choice in TEMPLATES:
        return TEMPLATES[choice]()
    found = tokenizer_template(data.tokenizer, base_dir) if data.tokenizer.kind == "file" else None
    if found is not None:
        return found
    if choice == "tokenizer":
        raise DataError(
            f"the tokenizer has no chat template: no chat_template.jinja, and no chat_template in tokenizer_config.json, "
            f"beside {data.tokenizer.path}; name a template (chatml, llama-3)", path=WHERE,
        )
    return TEMPLATES["chatml"]()


def tokenizer_template(tokenizer: Any, base_dir: Path) -> JinjaTemplate | None:
    """The chat template beside a `kind: file` tokenizer.json (chat_template.jinja, else the
    `chat_template` of tokenizer_config.json; of several named ones, `default`), or None."""
    path = Path(tokenizer.path) if os.path.isabs(tokenizer.path) else base_dir / tokenizer.path
    folder = path.parent
    config_path = folder / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"{config_path} is not readable JSON: {_first_line(error)}", path=WHERE) from None
        if not isinstance(config, dict):
            raise DataError(f"{config_path} holds {type(config).__name__}, not an object", path=WHERE)
    source, origin = None, str(config_path)
    if (folder / "chat_template.jinja").is_file():
        origin = str(folder / "chat_template.jinja")
        source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):  # several named templates: {name, template}
        named = {item.get("name"): item.get("template") for item in config["chat_template"] if isinstance(item, dict)}
        source = named.get("default") or next((t for t in named.values() if isinstance(t, str)), None)
    if not source:
        return None
    return JinjaTemplate(source, special_token_strings(config), origin)


def special_token_strings(config: dict[str, Any]) -> dict[str, str]:
    """bos_token, eos_token, ... of a tokenizer_config.json as strings (an AddedToken is {content: ...})."""
    tokens = {}
    for name, value in config.items():
        if not name.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            tokens[name] = value
    return tokens


def strip_special(text: str, specials: Sequence[str]) -> str:
    """`text` with the template's special tokens taken out (a tokenizer is trained on the words)."""
    for token in specials:
        text = text.replace(token, "\n")
    return text


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # transformers' own tojson: no HTML escaping (jinja2's built-in one escapes <, >, &).
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.TemplateError(message)


def _generation_tag():
    """A Jinja extension reading transformers' `{% generation %}...{% endgeneration %}` as its body."""
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Generation


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
