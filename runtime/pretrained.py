"""Pretrained weights for a model whose spec says `model.init: {kind: from, path: ...}` (fine-tuning).

    resolve_source(init, base_dir) -> Source         where the weights are, nothing read yet
    load_pretrained(model, spec) -> Source           copies them into a materialised model (runtime/build.py)
    check_pretrained(spec, vocab_size) -> Source     the same names and shapes, on the meta device: reads
                                                     only the files' headers (a run's prologue refuses early)

A source is a Hugging Face transformers checkpoint folder (config.json and model.safetensors, or the
shards model.safetensors.index.json lists; names mapped by compiler/hf_import.py), `hf:org/name` (that
folder in huggingface_hub's local cache: nothing is downloaded at run time), or a tabula run folder or
checkpoint folder (its model.safetensors, tabula's own names). Every weight of the model must come from
the source with its shape; anything else is refused (WeightsRefused) with the names that differ. One
exception: a source without any `vision.*` weight under a model with model.vision (a text model given an
image encoder, as LLaVA's recipe starts) leaves the encoder and projector as the init drew them.
Tensors are read one module at a time and copied into the model's parameters (cast to their dtype).
Never imports transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from tabula.schemas.rundir_protocol import WEIGHTS_FILE

from .errors import RunInputError

if TYPE_CHECKING:
    from tabula.compiler.model import Transformer
    from tabula.schemas.init import FromWeights
    from tabula.schemas.spec import Spec

WHERE = "model.init.path"
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
MAX_LISTED = 20  # mismatching names listed before "... and N more"


class WeightsRefused(RunInputError):
    """The source's weights do not fit the spec's model; `problems` has one line per name."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        listed = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
        super().__init__(f"{WHERE}: the weights in {source} do not fit the spec's model:\n" + "\n".join(f"  {line}" for line in listed))


@dataclass(frozen=True)
class Source:
    """Pretrained weights found: `kind` hf (a transformers checkpoint folder) or tabula (a checkpoint
    folder of a run); `folder`; `files` (the safetensors files); `named` (as the spec says it)."""

    kind: Literal["hf", "tabula"]
    folder: Path
    files: tuple[Path, ...]
    named: str

    def config(self) -> dict:
        """The checkpoint's config.json ({} for a tabula checkpoint)."""
        if self.kind != "hf":
            return {}
        return json.loads((self.folder / HF_CONFIG).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- finding the files


def hub_folder(repo: str, revision: str | None = None) -> Path:
    """The local snapshot of hub repository `repo` in huggingface_hub's cache; never downloads.
    Raises RunInputError (one line) where the cache does not hold it."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception as error:  # not cached, offline, a bad revision: all mean "not here"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        at = f"@{revision}" if revision else ""
        raise RunInputError(f"{WHERE}: hf:{repo}{at} is not in the Hugging Face cache and tabula downloads nothing at run time: "
                            f"fetch it first (hf download {repo}), or give a local folder ({reason})") from None


def hf_weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors files of a transformers checkpoint folder: the shards its index lists, or
    model.safetensors. Raises RunInputError where there are none."""
    index = folder / HF_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise RunInputError(f"{WHERE}: {folder}: {HF_INDEX} lists shards that are not there: {', '.join(missing)}")
        return tuple(folder / name for name in shards)
    if (folder / HF_WEIGHTS).is_file():
        return (folder / HF_WEIGHTS,)
    others = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    if others:
        raise RunInputError(f"{WHERE}: {folder} has weights only as {others[0].name}; tabula reads safetensors (transformers writes "
                            f"them: model.save_pretrained(folder))")
    raise RunInputError(f"{WHERE}: {folder} has a {HF_CONFIG} but no {HF_WEIGHTS} (nor {HF_INDEX})")


def resolve_source(init: FromWeights, base_dir: Path | str) -> Source:
    """Where `init` (a spec's model.init of kind from) points, relative paths against `base_dir`.
    Raises RunInputError naming what is missing; reads nothing but folder listings and indexes."""
    from .checkpoint import CheckpointError, find_checkpoint

    if init.hub_id is not None:
        folder = hub_folder(*init.hub_id)
    else:
        folder = Path(init.path) if os.path.isabs(init.path) else Path(base_dir) / init.path
    if not folder.is_dir():
        raise RunInputError(f"{WHERE}: {folder}: no such folder")
    if (folder / HF_CONFIG).is_file():
        return Source("hf", folder, hf_weight_files(folder), init.path)
    try:
        checkpoint = find_checkpoint(folder)
    except (CheckpointError, FileNotFoundError) as error:
        raise RunInputError(f"{WHERE}: {folder} is neither a Hugging Face checkpoint ({HF_CONFIG}) nor a tabula run or "
                            f"checkpoint folder with intact weights ({error})") from None
    return Source("tabula", checkpoint, (checkpoint / WEIGHTS_FILE,), init.path)


# ---------------------------------------------------------------- reading and fitting


@contextmanager
def _tensors(spec: Spec, source: Source, *, meta: bool) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """(tabula name, tensor) of the source, read lazily; with `meta`, empty tensors of the stored
    shapes on the meta device (only the headers are read)."""
    from safetensors import safe_open

    with ExitStack() as stack:
        where: dict[str, object] = {}
        aliases: dict[str, str] = {}
        for path in source.files:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            where |= dict.fromkeys(handle.keys(), handle)
            aliases |= json.loads((handle.metadata() or {}).get("aliases", "{}"))  # tabula's tied names

        def read(name: str) -> torch.Tensor:
            handle = where[aliases.get(name, name)]
            if meta:
                return torch.empty(handle.get_slice(aliases.get(name, name)).get_shape(), device="meta")
            return handle.get_tensor(aliases.get(name, name))

        names = [*where, *(alias for alias, target in aliases.items() if target in where)]
        if source.kind == "hf":
            from tabula.compiler.hf_import import tabula_tensors

            yield tabula_tensors(spec.model, names, read, source.config())
        else:
            yield ((name, read(name)) for name in sorted(names, key=lambda name: name != "embed.weight"))


@torch.no_grad()
def _fit(model: Transformer, tensors: Iterator[tuple[str, torch.Tensor]], *, copy: bool) -> list[str]:
    """Copies (with `copy`) each tensor into the model's parameter of that name; returns what does not
    fit: names the model lacks or the source lacks, shapes that differ, a tie the source does not keep."""
    from tabula.compiler.hf_import import ImportRefused

    targets = model.state_dict()
    tied = model.tie_embeddings
    problems, found = [], set()
    try:
        for name, tensor in tensors:
            found.add(name)
            if name not in targets:
                problems.append(f"unexpected: {name} (the spec's model has no such weight)")
            elif tuple(tensor.shape) != tuple(targets[name].shape):
                problems.append(f"shape: {name} is {tuple(targets[name].shape)} in the spec's model, {tuple(tensor.shape)} in the checkpoint"
                                + (" (model.vocab_size must be the checkpoint's)" if name in ("embed.weight", "lm_head.weight") else ""))
            elif name == "lm_head.weight" and tied:
                if copy and not torch.equal(tensor.to(targets[name].dtype).to(targets[name].device), targets[name]):
                    problems.append("tie: lm_head.weight differs from the embedding in the checkpoint, and the spec ties them "
                                    "(model.tie_embeddings: true)")
            elif copy:
                targets[name].copy_(tensor)
    except ImportRefused as error:
        problems += error.problems
    # a text checkpoint under a model with model.vision: the encoder and projector are new, drawn by the init
    new = {name for name in targets if name.startswith("vision.")} if not any(name.startswith("vision.") for name in found) else set()
    missing = sorted(set(targets) - found - new - ({"lm_head.weight"} if tied else set()))
    for name in missing:
        hint = " (the checkpoint ties its output head to the embedding: model.tie_embeddings: true)" if name == "lm_head.weight" else ""
        problems.append(f"missing: {name}{hint}")
    return problems


def _tie_kept(source: Source) -> bool:
    """Whether the source's output head is its embedding: it has no head of its own, or an equal one
    (the two tensors read, nothing else)."""
    from safetensors import safe_open

    embed, head = ("model.embed_tokens.weight", "lm_head.weight") if source.kind == "hf" else ("embed.weight", "lm_head.weight")
    found = {}
    for path in source.files:
        with safe_open(str(path), framework="pt") as handle:
            aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
            if aliases.get(head) == embed:
                return True
            found |= {name: handle.get_tensor(name) for name in (embed, head) if name in handle.keys()}
    return head not in found or embed not in found or torch.equal(found[embed], found[head])


def load_pretrained(model: Transformer, spec: Spec) -> Source:
    """Copies the pretrained weights `spec.model.init` (kind from) names into `model`, already materialised
    on its device. Raises RunInputError where the source cannot be found, WeightsRefused where its
    weights do not fit the model (every mismatching name listed). Returns the source read."""
    source = resolve_source(spec.model.init, spec.base_dir)
    with _tensors(spec, source, meta=False) as tensors:
        problems = _fit(model, tensors, copy=True)
    if problems:
        raise WeightsRefused(source.named, problems)
    return source


def check_pretrained(spec: Spec, vocab_size: int) -> Source:
    """The checks of load_pretrained without reading a weight: the model built on the meta device, the
    source's names and shapes from the files' headers (a tie is checked only by the load). Raises as
    load_pretrained does."""
    from tabula.compiler import build_model

    source = resolve_source(spec.model.init, spec.base_dir)
    model = build_model(spec, vocab_size=vocab_size)
    with _tensors(spec, source, meta=True) as tensors:
        problems = _fit(model, tensors, copy=False)
    if spec.model.tie_embeddings and not problems and not _tie_kept(source):
        problems.append("tie: lm_head.weight differs from the embedding in the checkpoint, and the spec ties them (model.tie_embeddings: true)")
    if problems:
        raise WeightsRefused(source.named, problems)
    return source


__all__ = ["Source", "WeightsRefused", "resolve_source", "hub_folder", "hf_weight_files", "load_pretrained", "check_pretrained"]
