"""Write a spec that fine-tunes a Hugging Face transformers checkpoint.

  tabula import path/to/Llama-3.2-1B --out llama.yaml
  tabula import hf:Qwen/Qwen2.5-0.5B --out qwen.yaml      (a model already in huggingface_hub's cache)

Reads the checkpoint's config.json (with transformers), its safetensors (names and shapes only) and its
tokenizer (tokenizer.json; a sentencepiece tokenizer.model is converted with transformers and written
next to the spec), and writes a spec whose `model:` reproduces the checkpoint (Llama, Mistral, Qwen2, or
DeepSeek-V3 whose every layer is dense) and whose weights come from it (model.init: {kind: from, path}),
the tokenizer taken from it, a placeholder data source to edit, and a fine-tuning recipe to adjust.
What tabula cannot express exactly (an architecture, RoPE scaling other than linear, mixture-of-experts
layers, a sliding window on some layers only...) is refused with every reason listed; nothing is
approximated. Without --out the spec is printed. The spec is validated as written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HELP = "write a spec that fine-tunes a Hugging Face checkpoint (Llama, Mistral, Qwen2, DeepSeek-V3 dense)"

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE = "tokenizer.model"
MAX_TRAIN_SEQ_LEN = 1024  # the written curriculum's sequence length, at most: a fine-tuning default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="HF_DIR", help="a transformers checkpoint folder (config.json, *.safetensors, tokenizer), or hf:org/name from the local Hugging Face cache")
    parser.add_argument("--out", metavar="SPEC", help="the spec file to write (default: print it)")
    parser.add_argument("--name", help="the experiment name (default: the checkpoint folder's)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


class _BadInput(Exception):
    """A message for the user; exit code 2."""


# ---------------------------------------------------------------- reading the checkpoint


def _folder(source: str) -> tuple[Path, str | None]:
    """(the checkpoint folder, the hub id `source` names or None)."""
    from tabula.schemas.init import HUB_ID

    if source.startswith("hf:"):
        from tabula.runtime.errors import RunInputError
        from tabula.runtime.pretrained import hub_folder

        match = HUB_ID.match(source)
        if match is None:
            raise _BadInput(f"{source}: a hub id is hf:org/name or hf:org/name@revision")
        try:
            return hub_folder(match["repo"], match["revision"]), source
        except RunInputError as error:
            raise _BadInput(str(error).removeprefix("model.init.path: ")) from None
    folder = Path(source)
    if not folder.is_dir():
        raise _BadInput(f"{source}: no such folder")
    if not (folder / "config.json").is_file():
        raise _BadInput(f"{source}: not a transformers checkpoint (no config.json)")
    return folder, None


def _config(folder: Path) -> dict[str, Any]:
    """config.json as transformers reads it (every key, its defaults filled); an architecture
    transformers does not know is read as written, for the refusal to name it."""
    from tabula.compiler.hf_import import architecture_of, importable_architectures

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if architecture_of(raw) not in importable_architectures():
        return raw
    try:
        from transformers import AutoConfig
    except ImportError:
        raise _BadInput("tabula import reads config.json with transformers: pip install 'tabula[hf]'") from None
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
    except Exception as error:
        raise _BadInput(f"{folder / 'config.json'}: transformers cannot read it: {_first_line(error)}") from None


def _tokenizer_file(folder: Path, out: Path | None) -> tuple[Path, str | None]:
    """The checkpoint's tokenizer.json, or its sentencepiece model converted to one next to the spec
    (then a note saying so)."""
    if (folder / TOKENIZER_JSON).is_file():
        return folder / TOKENIZER_JSON, None
    if not (folder / SENTENCEPIECE).is_file():
        raise _BadInput(f"{folder}: no {TOKENIZER_JSON} (nor a sentencepiece {SENTENCEPIECE}): tabula needs the checkpoint's tokenizer")
    if out is None:
        raise _BadInput(f"{folder} has only a sentencepiece {SENTENCEPIECE}: give --out, and the converted {TOKENIZER_JSON} is written next to the spec")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        converted = tokenizer.backend_tokenizer
    except Exception as error:
        raise _BadInput(f"{folder} has only a sentencepiece {SENTENCEPIECE}, which transformers could not convert to a {TOKENIZER_JSON} "
                        f"(converting needs the sentencepiece and protobuf packages: pip install sentencepiece protobuf; "
                        f"transformers said: {_first_line(error)})") from None
    path = out.parent / TOKENIZER_JSON
    if path.exists():
        raise _BadInput(f"{path} exists: the tokenizer converted from {SENTENCEPIECE} would replace it; write the spec in another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    converted.save(str(path))
    return path, f"converted {folder / SENTENCEPIECE} to {path} with transformers"


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {content: ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _special_tokens(folder: Path, config: dict, tokenizer, vocab_size: int) -> tuple[str, str]:
    """(eos, pad) tokens: tokenizer_config.json's, else the config's ids; pad falls back to eos."""
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def by_id(value: Any) -> str | None:
        value = value[0] if isinstance(value, list) and value else value
        return tokenizer.id_to_token(value) if isinstance(value, int) else None

    eos = _token(settings.get("eos_token")) or by_id(config.get("eos_token_id"))
    if eos is None:
        raise _BadInput(f"{folder}: no end-of-sequence token (no eos_token in tokenizer_config.json, no eos_token_id in config.json)")
    pad = _token(settings.get("pad_token")) or by_id(config.get("pad_token_id")) or eos
    for name, token in (("eos", eos), ("pad", pad)):
        token_id = tokenizer.token_to_id(token)
        if token_id is None or token_id >= vocab_size:
            raise _BadInput(f"{folder}: the {name} token {token!r} is not in the tokenizer's first {vocab_size} tokens")
    return eos, pad


# ---------------------------------------------------------------- writing the spec


def _path_in_spec(path: Path, spec_dir: Path) -> str:
    """`path` as the spec names it: relative to the spec's folder where it lies below it, else absolute."""
    path, spec_dir = path.resolve(), spec_dir.resolve()
    return Path(os.path.relpath(path, spec_dir)).as_posix() if spec_dir in path.parents else path.as_posix()


def _flow(value: Any) -> str:
    """A value in YAML flow style ({kind: rope, theta: 10000.0})."""
    from tabula.schemas.canonical import format_scalar

    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    return format_scalar(value)


def spec_text(*, name: str, model: dict, tokenizer: dict, architecture: str, source: str, seq_len: int) -> str:
    """The written spec: the imported model, the checkpoint's tokenizer, a placeholder data source and
    a fine-tuning recipe, with comments saying what to edit."""
    block = model["block"]
    lines = [
        f"# Written by `tabula import {source}`: the model reproduces that {architecture} checkpoint, and",
        "# every weight is loaded from it (model.init). Edit data.sources, then the recipe under train.",
        f"name: {_flow(name)}",
        "seed: 0",
        "model:",
        f"  vocab_size: {model['vocab_size']}  # the checkpoint's embedding rows",
        f"  d_model: {model['d_model']}",
        f"  n_layers: {model['n_layers']}",
        f"  max_seq_len: {model['max_seq_len']}",
        f"  position: {_flow(model['position'])}",
        "  block:",
        f"    norm: {_flow(block['norm'])}",
        f"    attention: {_flow(block['attention'])}",
        f"    mlp: {_flow(block['mlp'])}",
        f"  tie_embeddings: {_flow(model['tie_embeddings'])}",
        f"  init: {_flow(model['init'])}",
        "data:",
        f"  tokenizer: {_flow(tokenizer)}",
        "  # A PLACEHOLDER: point this at your own data before `tabula run` (`tabula prepare` checks it).",
        "  sources:",
        "    train: {kind: files, paths: [data/*.jsonl], format: jsonl, text_field: text}",
        "  curriculum:",
        f"    - {{seq_len: {seq_len}}}",
        "parallel:",
        "  precision: auto",
        "train:",
        f"  batch_tokens: {8 * seq_len}",
        "  optimizer: {kind: adamw, lr: 2.0e-05, betas: [0.9, 0.95], weight_decay: 0.0}",
        "  schedule: {kind: cosine, warmup: 3%, min_lr_ratio: 0.1}",
        "  budget: {tokens: 10M}",
        "  checkpoint: {keep_last: 2, keep_best_by: null}",
    ]
    return "\n".join(lines) + "\n"


def _experiment_name(source: str, folder: Path) -> str:
    base = source.split("/")[-1].split("@")[0] if source.startswith("hf:") else folder.resolve().name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")
    return name or "imported"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def run(args) -> int:
    from tabula.compiler.hf_import import ImportRefused, architecture_of, model_from_hf_config
    from tabula.report import print_errors
    from tabula.runtime.errors import RunInputError
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec_text

    out = Path(args.out) if args.out else None
    spec_dir = out.parent if out is not None else Path.cwd()
    try:
        if out is not None and out.exists() and not args.force:
            raise _BadInput(f"--out {out}: exists; choose another file or add --force to replace it")
        folder, hub_id = _folder(args.source)
        config = _config(folder)
        model = model_from_hf_config(config, weights=hub_id or _path_in_spec(folder, spec_dir))
        tokenizer_path, note = _tokenizer_file(folder, out)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        if tokenizer.get_vocab_size(with_added_tokens=True) > model["vocab_size"]:
            raise _BadInput(f"{tokenizer_path}: the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens, more than the "
                            f"model's {model['vocab_size']} embedding rows")
        eos, pad = _special_tokens(folder, config, tokenizer, model["vocab_size"])
        token = {"kind": "file", "path": _path_in_spec(tokenizer_path, spec_dir), "eos_token": eos, "pad_token": pad}
        architecture = architecture_of(config)
        text = spec_text(name=args.name or _experiment_name(args.source, folder), model=model, tokenizer=token,
                         architecture=architecture, source=args.source, seq_len=min(model["max_seq_len"], MAX_TRAIN_SEQ_LEN))
        spec = load_spec_text(text, name=str(out or "<tabula import>"), base_dir=spec_dir)
        from tabula.runtime.pretrained import check_pretrained

        check_pretrained(spec, model["vocab_size"])  # every weight there, with the model's shape
    except _BadInput as error:
        sys.stderr.write(f"tabula import: {error}\n")
        return 2
    except ImportRefused as error:
        sys.stderr.write(f"tabula import: {args.source} cannot be expressed in tabula exactly, so it is not imported:\n")
        sys.stderr.write("".join(f"  {problem}\n" for problem in error.problems))
        return 2
    except SpecErrors as error:  # a model the checkpoint has that a spec refuses (e.g. odd head widths)
        sys.stderr.write(f"tabula import: {args.source} makes a spec tabula refuses:\n")
        print_errors(error.errors)
        return 2
    except RunInputError as error:
        sys.stderr.write(f"tabula import: {str(error).removeprefix('model.init.path: ')}\n")
        return 2
    summary = f"{architecture} from {args.source}: {model['n_layers']} layers, d_model {model['d_model']}, vocab {model['vocab_size']}"
    if out is None:
        sys.stdout.write(text)
        sys.stderr.write(f"tabula import: {summary}\n")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}: {summary}; edit data.sources before `tabula run {out}`")
    if note:
        sys.stderr.write(f"tabula import: {note}\n")
    return 0
