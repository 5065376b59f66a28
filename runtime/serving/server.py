"""A server from the inference core's Generator: the scheduler over its decoder, the app over its
tokenizer and the model's chat template. What `tabula serve` and bench/bench_serving.py build."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .app import ServedModel, create_app
from .metrics import Metrics
from .scheduler import Scheduler, SchedulerConfig


def chat_template_of(source: str | os.PathLike[str]) -> Any:
    """The chat template a model was trained with: a run's data.chat.template (auto: the tokenizer's own, else
    ChatML); a Hugging Face folder's chat_template (chat_template.jinja or tokenizer_config.json), else ChatML."""
    from ..data.chat_template import TEMPLATES, resolve_template, tokenizer_template

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        found = tokenizer_template(SimpleNamespace(path=str(path / "tokenizer.json")), path)
        return found if found is not None else TEMPLATES["chatml"]()
    if path.is_dir():
        from tabula.schemas.loader import load_run_spec

        run_dir = path if (path / "resolved.yaml").is_file() else path.parent.parent  # a checkpoint folder's run
        spec = load_run_spec(run_dir)
        return resolve_template(spec.data, Path(spec.base_dir))
    return TEMPLATES["chatml"]()


def _token_id(tokenizer: Any, text: str | None) -> int | None:
    return None if tokenizer is None or not text else tokenizer.token_to_id(text)


def served_model(generator: Any, name: str, template: Any = None) -> ServedModel:
    """What the app needs of a Generator: its encode (with the ids every document starts after), its context
    and vocabulary, and the template's messages -> prompt with the end-of-turn token a chat answer stops on."""
    chat = None
    stops: tuple[int, ...] = ()
    if template is not None and generator.tokenizer is not None:
        def chat(messages: list[dict[str, str]]) -> str:
            return template.render(messages, add_generation_prompt=True)

        end = _token_id(generator.tokenizer, getattr(template, "end", None))
        stops = (end,) if end is not None else ()
    return ServedModel(name, generator.encode, generator.context, chat=chat, chat_stop_ids=stops, vocab_size=generator.vocab_size)


@dataclass
class Server:
    app: Any
    scheduler: Scheduler
    model: ServedModel
    metrics: Metrics


def build_server(generator: Any, name: str, *, template: Any = None, config: SchedulerConfig | None = None,
                 api_key: str | None = None) -> Server:
    """The app and its scheduler (started) for `generator` (runtime/inference Generator); `config`'s
    stop_token_ids get the generator's end-of-text id. Close with `server.scheduler.close()`."""
    config = config or SchedulerConfig()
    if generator.eos_id is not None and generator.eos_id not in config.stop_token_ids:
        config = SchedulerConfig(**{**config.__dict__, "stop_token_ids": (*config.stop_token_ids, generator.eos_id)})
    scheduler = Scheduler(generator.decoder, lambda ids: generator.decode(list(ids)), config).start()
    model = served_model(generator, name, template)
    metrics = Metrics()
    return Server(create_app(scheduler, model, api_key=api_key, metrics=metrics), scheduler, model, metrics)
