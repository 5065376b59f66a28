"""Benchmarks through lm-evaluation-harness (lm-eval 0.4): tabula's model as an lm-eval `LM`, and the
evaluation of named tasks with the results kept as plain numbers.

`TabulaLM(model, tokenizer, ...)`: loglikelihood and loglikelihood_rolling are scored from plain forward
passes, batched by length (`scoring.py`); generate_until decodes greedily with the inference
package's Generator (KV cache, batched). A text is
tokenized without special tokens, as the model was trained; a request with an empty context is
conditioned on the end-of-text token.

`evaluate_tasks(lm, tasks, ...)`: builds each task first, one at a time, so that a task that is unknown,
or whose data needs a download this machine cannot make, is refused with one line naming it
(`BenchmarkError`) before any model time is spent. Local task YAML (and local data files) come in
through `include` folders, as lm-eval's `--include_path`.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lm_eval.api.model import LM

from tabula.runtime.errors import RunInputError

from .scoring import Scored, context_windows, join, score_windows

OFFLINE_HINTS = ("offline", "connection", "couldn't reach", "could not reach", "max retries", "name resolution",
                 "cannot find the requested files in the local cache", "not found on the hub", "doesn't exist on the hub")


class BenchmarkError(RunInputError):
    """A task that cannot be evaluated here (unknown, or its data cannot be had): one line."""


@dataclass(frozen=True)
class BenchmarkResults:
    """Scores by task and metric (stderr entries dropped), and lm-eval's whole results dict."""

    scores: dict[str, dict[str, float]]
    raw: dict[str, Any]
    limit: int | float | None


class TabulaLM(LM):
    """A tabula Transformer (eval mode) and its `tokenizers.Tokenizer` as an lm-eval language model."""

    def __init__(self, model, tokenizer, *, eos_id: int | None, batch_size: int = 8, device: str = "cpu",
                 max_length: int | None = None, name: str = "tabula") -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else 0
        self.batch_size = max(1, batch_size)
        self._device = device
        self.max_length = max_length or (model.max_seq_len - getattr(model, "n_virtual", 0))
        self.name = name
        self._generator: Any = None  # the inference Generator, made at the first generate_until

    @property
    def tokenizer_name(self) -> str:
        return self.name

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------ lm-eval's three requests

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            spaces = len(context) - len(context.rstrip())  # a trailing space belongs to the continuation's first token
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self.encode(context + continuation)
            head = self.encode(context)
            if whole[: len(head)] != head:  # the join merged tokens across the boundary: score them apart
                whole = head + self.encode(continuation)
            tokens = [self.eos_id] + whole
            pairs.append((tokens, 1 + len(head)))
        scored = self._score(pairs)
        return [(result.total, result.all_greedy) for result in scored]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [result.total for result in self._score([([self.eos_id] + self.encode(r.args[0]), 1) for r in requests])]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations through the inference package's Generator (KV cache), batched: requests
        sharing their stop strings and length go together, `batch_size` at a time. A context longer than
        the model's keeps its last tokens."""
        from tabula.runtime.inference.generator import Generator
        from tabula.runtime.inference.sampling import SamplingParams

        if self._generator is None:
            self._generator = Generator(self.model, self.tokenizer, eos_id=self.eos_id)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        prompts = []
        for index, request in enumerate(requests):
            context, options = request.args[0], dict(request.args[1] or {})
            until = options.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((until, int(options.get("max_gen_toks", 128))), []).append(index)
            prompts.append([self.eos_id] + self.encode(context))
        out = [""] * len(requests)
        for (until, max_new), indices in groups.items():
            params = SamplingParams(max_new_tokens=max_new, temperature=0.0, stop=until)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                completions = self._generator.generate([prompts[i] for i in chunk], params, on_long_prompt="truncate")
                for index, completion in zip(chunk, completions):
                    out[index] = cut_at_stops(completion.text, until)
        return out

    def _score(self, sequences: list[tuple[list[int], int]]) -> list[Scored]:
        """Each (tokens, first) scored from `first` on, split into context-sized windows."""
        windows, owners = [], []
        for index, (tokens, first) in enumerate(sequences):
            for window in context_windows(tokens, first, self.max_length):
                windows.append(window)
                owners.append(index)
        if not windows:
            return [Scored((), ()) for _ in sequences]
        parts = score_windows(self.model, windows, batch_size=self.batch_size, device=self._device)
        grouped: list[list[Scored]] = [[] for _ in sequences]
        for owner, part in zip(owners, parts):
            grouped[owner].append(part)
        return [join(group) for group in grouped]


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the earliest stop string."""
    cuts = [text.index(stop) for stop in until if stop and stop in text]
    return text[: min(cuts)] if cuts else text


def task_manager(include: Sequence[str | Path] = (), *, defaults: bool = True):
    """lm-eval's TaskManager with the `include` folders of local task YAML; `defaults`: lm-eval's own
    tasks too (indexing its ~15k task files takes tens of seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include] or None, include_defaults=defaults)


def manager_for(names: Sequence[str], include: Sequence[str | Path] = ()):
    """The TaskManager that knows `names`: the local folders' alone when they define every name (no need to
    index lm-eval's own tasks), else one with lm-eval's tasks as well."""
    if include:
        local = task_manager(include, defaults=False)
        if set(names) <= set(local.all_tasks):
            return local
    return task_manager(include)


def build_tasks(names: Sequence[str], manager) -> dict[str, Any]:
    """lm-eval's task objects by name. Raises BenchmarkError for an unknown task, or one whose data
    cannot be loaded (a download on an offline machine), naming it."""
    from lm_eval.tasks import get_task_dict

    known = set(manager.all_tasks)
    tasks: dict[str, Any] = {}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.7)
            hint = (f" (did you mean {', '.join(close)}?)" if close
                    else ": not one of lm-eval's tasks nor a local task YAML's under --include")
            raise BenchmarkError(f"unknown task {name!r}{hint}")
        try:
            tasks.update(get_task_dict([name], manager))
        except Exception as error:  # datasets / huggingface_hub raise many kinds when offline
            text = f"{type(error).__name__}: {error}"
            if any(hint in text.lower() for hint in OFFLINE_HINTS):
                raise BenchmarkError(f"task {name!r} needs a download of its data and this machine is offline "
                                     f"({text.splitlines()[0][:200]}); use a local task YAML with local data files "
                                     f"(--include DIR)") from error
            raise BenchmarkError(f"task {name!r} cannot be loaded: {text.splitlines()[0][:300]}") from error
    return tasks


def evaluate_tasks(lm: LM, names: Sequence[str], *, include: Sequence[str | Path] = (), limit: int | float | None = None,
                   num_fewshot: int | None = None, cache: str | Path | None = None, seed: int = 1234,
                   manager: Any = None) -> BenchmarkResults:
    """Evaluate `lm` on the tasks `names` (lm-eval's names, or those of local YAML under `include`).
    `limit`: at most this many examples a task (a fraction below 1). `cache`: lm-eval's request cache
    (a path prefix for its sqlite file; one a model, since the cache does not know the model). `manager`:
    a TaskManager made before (`manager_for`), kept between evaluations of a training."""
    import lm_eval

    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    manager = manager if manager is not None else manager_for(names, include)
    tasks = build_tasks(names, manager)
    raw = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=limit, num_fewshot=num_fewshot,
                                  use_cache=str(cache) if cache else None, task_manager=manager, log_samples=False,
                                  bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    return BenchmarkResults(scores=scores_of(raw), raw=_plain(raw), limit=limit)


def scores_of(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results (`acc,none` -> `acc`; stderr and aliases dropped)."""
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in (raw.get("results") or {}).items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if "stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = metric if filter_name in ("", "none") else f"{metric}[{filter_name}]"
            if math.isfinite(value):
                scores.setdefault(task, {})[name] = float(value)
    return scores


def _plain(value: Any) -> Any:
    """lm-eval's results made JSON-able (numpy numbers, tuples, sets, objects as text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)
