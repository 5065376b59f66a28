"""load_generator: a Generator from a run folder, a checkpoint folder, a spec file or a Hugging Face folder.

    RUN_DIR / CHECKPOINT   tabula.load_model's weights (newest intact checkpoint; LoRA/DoRA merged), the
                           run's tokenizer.json, documents start after the spec's eos_token
    SPEC (a .yaml file)    the spec's model as `tabula run` would start it (seeded init, or model.init's
                           pretrained weights); the tokenizer from a file tokenizer or the prepared data
    HF_EXPORT_DIR          a folder with config.json and safetensors (what `tabula export` writes, or a
                           Llama/Mistral/Qwen2/DeepSeek-V3 checkpoint): imported as `tabula import` reads it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tabula.schemas.rundir_protocol import RESOLVED_FILE, TOKENIZER_FILE, WEIGHTS_FILE

from ..errors import RunInputError
from .generator import Generator


def _tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)) if path.is_file() else None


def _eos(spec: Any, tokenizer: Any) -> int | None:
    return None if tokenizer is None else tokenizer.token_to_id(spec.data.tokenizer.eos_token)


def load_generator(source: str | os.PathLike[str], *, device: str | torch.device = "cpu", overrides: list[str] | tuple[str, ...] = (),
                   allow_extends_outside: bool = False, **options: Any) -> Generator:
    """A Generator for `source` (see the module docstring) on `device`; `options` go to Generator (absorb,
    slack, on_context_full). Raises RunInputError (a missing path, a folder that is none of these, a
    checkpoint that cannot be read), SpecErrors for a bad spec."""
    path = Path(source)
    if not path.exists():
        raise RunInputError(f"{path}: no such run directory, checkpoint, spec file or Hugging Face folder")
    if path.is_dir() and (path / "config.json").is_file():
        model, tokenizer, eos, start = _from_hf(path, device)
    elif path.is_dir():
        if overrides:
            raise RunInputError(f"{path}: overrides apply to a spec, not to a run's checkpoint ({' '.join(overrides)})")
        model, tokenizer, eos, start = _from_run(path, device)
    else:
        model, tokenizer, eos, start = _from_spec(path, device, list(overrides), allow_extends_outside)
    return Generator(model, tokenizer, eos_id=eos, start_ids=start, **options)


def _from_run(path: Path, device: Any) -> tuple[Any, Any, int | None, list[int]]:
    from tabula.schemas.loader import load_run_spec

    from ..checkpoint import CheckpointError, find_checkpoint, load_model

    try:
        checkpoint = find_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as error:
        if not (path / RESOLVED_FILE).is_file() and not (path / WEIGHTS_FILE).is_file():
            raise RunInputError(f"{path}: not a run directory (no {RESOLVED_FILE}), a checkpoint or a Hugging Face folder (no config.json)") from None
        raise RunInputError(f"{path}: {error}") from None
    run_dir = checkpoint.parent.parent
    try:
        model = load_model(checkpoint, device)
    except (CheckpointError, OSError, RuntimeError, ValueError) as error:
        raise RunInputError(f"{checkpoint}: {error}") from None
    spec = load_run_spec(run_dir)
    tokenizer = _tokenizer(run_dir / TOKENIZER_FILE)
    eos = _eos(spec, tokenizer)
    return model, tokenizer, eos, [eos] if eos is not None else []


def _from_spec(path: Path, device: Any, overrides: list[str], allow_extends_outside: bool) -> tuple[Any, Any, int | None, list[int]]:
    from tabula.schemas.loader import load_spec

    from ..build import build_base_model

    spec = load_spec(path, overrides, allow_extends_outside=allow_extends_outside)
    tokenizer = None
    if spec.data.tokenizer.kind == "file":
        tokenizer = _tokenizer(Path(spec.base_dir) / spec.data.tokenizer.path)
    else:
        from ..data import DataError, find_prepared

        try:
            prepared = find_prepared(spec)
        except DataError:
            prepared = None
        tokenizer = prepared.tokenizer if prepared is not None else None
    vocab = spec.vocab_size or (tokenizer.get_vocab_size() if tokenizer is not None else None)
    if vocab is None:
        raise RunInputError(f"{path}: model.vocab_size is auto and no tokenizer says it (`tabula prepare {path}` makes one)")
    model = build_base_model(spec, vocab, torch.device(device))
    eos = _eos(spec, tokenizer)
    return model.eval(), tokenizer, eos, [eos] if eos is not None else []


def _from_hf(folder: Path, device: Any) -> tuple[Any, Any, int | None, list[int]]:
    from tabula.compiler.hf_import import ImportRefused, model_from_hf_config
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.spec import Spec

    from ..build import build_base_model
    from ..pretrained import WeightsRefused

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model_section = model_from_hf_config(config, weights=str(folder.resolve()))
    except (OSError, ValueError) as error:
        raise RunInputError(f"{folder / 'config.json'}: {error}") from None
    except ImportRefused as error:
        raise RunInputError(f"{folder}: cannot be read as a tabula model: {'; '.join(error.problems)}") from None
    tokenizer = _tokenizer(folder / "tokenizer.json")
    raw = {"name": "generate", "model": model_section,
           "data": {"tokenizer": {"kind": "file", "path": str((folder / "tokenizer.json").resolve())},
                    "sources": {"text": {"kind": "python_stdlib"}}, "curriculum": [{"seq_len": 8}]},
           "train": {"batch_tokens": 8, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 8}}}
    try:
        spec = Spec.model_validate(raw)
        model = build_base_model(spec, model_section["vocab_size"], torch.device(device))
    except (SpecErrors, WeightsRefused, ValueError) as error:
        raise RunInputError(f"{folder}: {str(error).splitlines()[0]}") from None
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    bos = config.get("bos_token_id")
    start: list[int] = []
    if tokenizer is not None and isinstance(bos, int) and tokenizer.encode("a").ids[:1] != [bos]:
        start = [bos]  # a tokenizer that does not put the start token itself (tabula's own exports)
    return model.eval(), tokenizer, eos if isinstance(eos, int) else None, start
