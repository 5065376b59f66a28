"""Write a model in another library's format.

    tabula export SPEC --format hf --out DIR       the spec's model, seed-initialised
    tabula export RUN_DIR --format hf --out DIR    the newest checkpoint of a run (LoRA, DoRA merged)
    tabula export RUN_DIR --format peft --out DIR  a fine-tuning run's adapter, and its base in DIR/base
    tabula export RUN_DIR --format onnx --out DIR  an ONNX graph for onnxruntime (LoRA, DoRA merged)
    tabula export RUN_DIR --format onnx --with-cache --out DIR   the same, with key/value cache inputs and outputs

--format hf writes config.json, model.safetensors and the tokenizer (tokenizer.json,
tokenizer_config.json) where there is one (a spec's tokenizer file, a run's tokenizer.json, or
what `tabula prepare SPEC` trained, from the token cache), so that transformers'
AutoModelForCausalLM and AutoTokenizer load DIR offline: as Llama (MHA/GQA/MQA, RoPE, RMSNorm, SwiGLU), Mistral (the
same with a sliding window), Qwen2 (biases on q, k and v only) or DeepSeek-V3 (MLA with latent norms). `tabula import`
reads these back. A model with no equivalent
there is refused with what does not map, before anything is written.

A run directory is read as the runtime writes it: resolved.yaml, tokenizer.json and
checkpoints/step-NNNNNN/model.safetensors (the highest step is taken). A fine-tuning run's checkpoint
holds its trained parameters alone: they are loaded over the base the spec builds (train.finetune).
--format hf merges LoRA and DoRA adapters into the weights (peft's merge: what merge_and_unload gives);
prompt and prefix tuning fold into no weight and export as peft only. --format peft writes
adapter_config.json and adapter_model.safetensors, which peft.PeftModel.from_pretrained loads onto the
base written beside them in DIR/base (the Hugging Face export of the model before fine-tuning; QLoRA's
base in full precision), with the module names of transformers' architecture.

--format onnx writes model.onnx (torch's ONNX exporter, opset 18: input_ids (batch, seq) int64 ->
logits (batch, seq, vocab) float32, both axes dynamic, seq up to model.max_seq_len), tabula_onnx.json
(the graph's contract) and the tokenizer.json where there is one. onnxruntime's logits match tabula's
within 1e-4 in fp32. Kinds without a verified graph, and prompt or prefix tuning's virtual tokens, are
refused with the reason before anything is written. With --with-cache the graph also takes each layer's
past keys and values, past_key_values.<i>.key and .value (batch, heads, past_seq, width; past_seq may be
0), and returns them with the new tokens' as present.<i>.key and .value (batch, heads, past_seq + seq,
width), Optimum's names: the new tokens' positions start at past_seq (compiler/onnx_cache.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabula.schemas.rundir_protocol import CHECKPOINT_PREFIX, CHECKPOINTS_DIR, RESOLVED_FILE, TOKENIZER_FILE, WEIGHTS_FILE

HELP = "export a spec's or a run's model in Hugging Face or ONNX format, or a fine-tuning run's adapter for peft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tabula.report import add_extends_flag

    parser.add_argument("source", metavar="SPEC|RUN_DIR", help="a spec file (seed-initialised weights) or a run directory (its newest checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="a.b=v", help="overrides for a spec, e.g. model.n_layers=2 (values are YAML)")
    parser.add_argument("--format", choices=["hf", "peft", "onnx"], default="hf",
                        help="hf: Hugging Face transformers (adapters merged); peft: a fine-tuning run's adapter for peft, its base in "
                             "OUT/base; onnx: an ONNX graph (input_ids -> logits, dynamic batch and sequence) for onnxruntime")
    parser.add_argument("--with-cache", action="store_true",
                        help="with --format onnx: the graph also takes each layer's past keys and values (past_key_values.<i>.key, "
                             ".value) and returns them with the new tokens' (present.<i>.key, .value), for step-by-step decoding")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write: new or empty (created where absent)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out: the exported files are replaced, a tokenizer left by an earlier export is removed")
    add_extends_flag(parser)


def find_weights(run_dir: Path) -> Path | None:
    """The newest checkpoint's weights in a run directory: checkpoints/step-NNNNNN/model.safetensors
    with the highest step; None where the run has no checkpoint yet."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    steps = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    steps = [p for p in steps if (p / WEIGHTS_FILE).is_file()]
    if not steps:
        return None
    return max(steps, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):])) / WEIGHTS_FILE


class _BadInput(Exception):
    """A message for the user; exit code 2."""


class _Reported(Exception):
    """Errors already printed (a bad spec); exit code 2."""


def _load_spec(path: Path, overrides: list[str], allow_extends_outside: bool = False):
    from tabula.report import load_spec_or_report

    spec = load_spec_or_report(path, overrides, allow_extends_outside=allow_extends_outside)
    if spec is None:
        raise _Reported()
    return spec


def _load_run_spec(run_dir: Path):
    """The run's resolved.yaml, relative paths against the folder of the spec it ran (load_run_spec)."""
    from tabula.report import print_errors
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_run_spec

    try:
        return load_run_spec(run_dir)
    except SpecErrors as errors:
        print_errors(errors.errors)
        raise _Reported() from None


def _read_source(source: Path, overrides: list[str], allow_extends_outside: bool = False):
    """(spec, weights path or None, tokenizer.json text or None) for a spec file or a run directory."""
    try:
        exists, is_dir = source.exists(), source.is_dir()
    except (OSError, ValueError) as error:  # a name too long for a file name
        raise _BadInput(f"{source}: {getattr(error, 'strerror', None) or error}") from None
    if not exists:
        raise _BadInput(f"{source}: no such spec file or run directory")
    if is_dir:
        if not (source / RESOLVED_FILE).is_file():
            raise _BadInput(f"{source}: not a run directory (no resolved.yaml)")
        weights = find_weights(source)
        if weights is None:
            raise _BadInput(f"{source}: the run has no checkpoint yet (checkpoints/step-*/model.safetensors)")
        if overrides:
            raise _BadInput(f"{source}: overrides apply to a spec, not to a run's checkpoint ({' '.join(overrides)})")
        tokenizer = source / TOKENIZER_FILE
        return _load_run_spec(source), weights, tokenizer.read_text(encoding="utf-8") if tokenizer.is_file() else None
    spec = _load_spec(source, overrides, allow_extends_outside)
    tokenizer_json = None
    if spec.data.tokenizer.kind == "file":
        path = Path(spec.base_dir) / spec.data.tokenizer.path  # an absolute path stays itself
        tokenizer_json = path.read_text(encoding="utf-8") if path.is_file() else None
    return spec, None, tokenizer_json


def _prepared_tokenizer(spec, source: Path) -> str | None:
    """A trained (or hub) tokenizer from the token cache, where `tabula prepare` made it; else None, said on stderr."""
    from tabula.runtime.data import DataError, find_prepared

    try:
        prepared = find_prepared(spec)
    except DataError as error:
        sys.stderr.write(f"tabula export: no tokenizer written: {error}\n")
        return None
    if prepared is None:
        sys.stderr.write(f"tabula export: no tokenizer written: its data is not prepared yet (tabula prepare {source} makes it)\n")
        return None
    return prepared.tokenizer_json


# Files an earlier export may have left that would not fit the new model (a stale tokenizer, adapter).
STALE_FILES = ("tokenizer.json", "tokenizer_config.json", "adapter_config.json", "adapter_model.safetensors")


def _check_out(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, or a non-empty folder without --force (an earlier export's
    tokenizer would silently stay beside other weights)."""
    try:
        exists, is_dir = out.exists(), out.is_dir()
    except (OSError, ValueError) as error:  # a name too long for a file name
        raise _BadInput(f"--out {out}: {getattr(error, 'strerror', None) or error}") from None
    if exists and not is_dir:
        raise _BadInput(f"--out {out}: exists and is not a folder")
    if is_dir and any(out.iterdir()) and not force:
        raise _BadInput(f"--out {out}: the folder is not empty; choose a new one, or add --force to replace the export in it")


def _write(out: Path, write) -> list[str]:
    """Run `write()` into `out`, turning file system errors into one line naming the folder."""
    try:
        for name in STALE_FILES:
            (out / name).unlink(missing_ok=True)
        return write()
    except OSError as error:
        raise _BadInput(f"--out {out}: cannot write {error.filename or ''}: {error.strerror or error}") from None


def _vocab_size(spec, tokenizer_json: str | None) -> int:
    if spec.vocab_size is not None:
        return spec.vocab_size
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(tokenizer_json).get_vocab_size()
    raise _BadInput("model.vocab_size is auto and no tokenizer file says it: set model.vocab_size in the spec")


def _trained_model(spec, weights: Path):
    """The spec's model holding the checkpoint's weights (names and shapes checked against the spec),
    through the runtime's one loader: its non-persistent buffers (RoPE's tables) are made on the CPU too,
    which the ONNX export traces."""
    from safetensors import SafetensorError, safe_open

    from tabula.runtime.checkpoint import CheckpointError, load_trained_model

    try:
        with safe_open(str(weights), framework="pt") as handle:
            if "embed.weight" not in handle.keys():
                raise _BadInput(f"{weights}: not a tabula checkpoint (no embed.weight)")
    except (SafetensorError, OSError) as error:
        raise _BadInput(f"{weights}: unreadable: {error}") from None
    try:
        return load_trained_model(spec, weights.parent)
    except (CheckpointError, RuntimeError, ValueError) as error:
        raise _BadInput(f"{weights}: the checkpoint does not fit its resolved.yaml: {error}") from None


def _finetuned_model(spec, checkpoint: Path):
    """A fine-tuning checkpoint's trained parameters over the base the spec builds, adapters unmerged."""
    from tabula.runtime.checkpoint import CheckpointError, load_trained_model

    try:
        return load_trained_model(spec, checkpoint)
    except (CheckpointError, RuntimeError, ValueError) as error:
        raise _BadInput(f"{checkpoint}: {error}") from None


def _hf(out: Path, spec, model, tokenizer_json: str | None) -> list[str]:
    """The model in Hugging Face format: LoRA and DoRA merged into the weights (peft's merge)."""
    from tabula.compiler.adapters import merge_adapters
    from tabula.compiler.hf import write_hf

    if model.virtual_tokens is not None:
        raise _BadInput(f"{spec.train.finetune.kind} learns virtual tokens, which fold into no weight: export it with --format peft")
    merge_adapters(model)
    token = spec.data.tokenizer
    return write_hf(out, spec.model, model.state_dict(), model.vocab_size, tokenizer_json=tokenizer_json,
                    eos_token=token.eos_token, pad_token=token.pad_token)


def _peft(out: Path, spec, model, tokenizer_json: str | None) -> list[str]:
    """The adapter in peft's format, and the base it loads onto in out/base."""
    from safetensors.torch import save_file

    from tabula.compiler.hf import write_hf
    from tabula.compiler.peft_export import peft_adapter
    from tabula.runtime.build import build_base_model

    base = out / "base"
    config, tensors = peft_adapter(spec.model, spec.train.finetune, model, base_model_name_or_path=str(base.resolve()))
    token = spec.data.tokenizer
    written = [f"base/{name}" for name in write_hf(base, spec.model, build_base_model(spec, model.vocab_size, "cpu").state_dict(),
                                                   model.vocab_size, tokenizer_json=tokenizer_json, eos_token=token.eos_token,
                                                   pad_token=token.pad_token)]
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return ["adapter_config.json", "adapter_model.safetensors", *written]


def _onnx(out: Path, spec, model, tokenizer_json: str | None, *, with_cache: bool = False) -> list[str]:
    """The model as an ONNX graph (adapters merged), and the tokenizer beside it."""
    from tabula.compiler.adapters import merge_adapters
    from tabula.compiler.onnx_export import export_onnx

    if model.virtual_tokens is not None:
        raise _BadInput(f"{spec.train.finetune.kind} learns virtual tokens, which the ONNX graph does not take: export it with --format peft")
    merge_adapters(model)
    written = export_onnx(model, out, with_cache=with_cache)
    if tokenizer_json is not None:
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        written.append("tokenizer.json")
    return written


def run(args) -> int:
    from tabula.compiler import build_model
    from tabula.compiler.hf import ExportError, hf_architecture, hf_notes, hf_problems
    from tabula.compiler.onnx_export import OnnxExportError, onnx_problems
    from tabula.runtime.checkpoint import finetune_record

    out = Path(args.out)
    try:
        if args.with_cache and args.format != "onnx":
            raise _BadInput(f"--with-cache is for --format onnx (the graph's key/value cache), not --format {args.format}")
        spec, weights, tokenizer_json = _read_source(Path(args.source), args.overrides, args.allow_extends_outside)
        # refused before any weights are read or made
        problems = onnx_problems(spec.model) if args.format == "onnx" else hf_problems(spec.model)
        if problems:
            raise (OnnxExportError if args.format == "onnx" else ExportError)(problems)
        finetune = spec.train.finetune
        if args.format == "peft" and (weights is None or finetune is None or finetune.kind == "full"):
            what = "a spec" if weights is None else "this run" if finetune is None else "full fine-tuning"
            raise _BadInput(f"--format peft writes a fine-tuning run's adapter; {what} has none (export --format hf)")
        _check_out(out, args.force)
        if weights is None and spec.data.tokenizer.kind != "file":
            tokenizer_json = _prepared_tokenizer(spec, Path(args.source))
        if weights is None:
            model = build_model(spec, vocab_size=_vocab_size(spec, tokenizer_json), device="cpu")  # seed-initialised
        elif finetune_record(weights) is not None or args.format == "peft":
            model = _finetuned_model(spec, weights.parent)
        else:
            model = _trained_model(spec, weights)
        write = {"peft": _peft, "onnx": lambda *a: _onnx(*a, with_cache=args.with_cache)}.get(args.format, _hf)
        written = _write(out, lambda: write(out, spec, model, tokenizer_json))
    except _Reported:
        return 2
    except _BadInput as error:
        sys.stderr.write(f"tabula export: {error}\n")
        return 2
    except OnnxExportError as error:
        sys.stderr.write("tabula export: this model cannot be exported to ONNX:\n")
        for problem in error.problems:
            sys.stderr.write(f"  {problem}\n")
        return 2
    except ExportError as error:
        what = "this adapter has no peft equivalent" if args.format == "peft" else "this model has no Hugging Face equivalent"
        sys.stderr.write(f"tabula export: {what}:\n")
        for problem in error.problems:
            sys.stderr.write(f"  {problem}\n")
        return 2
    kind = ("ONNX with a key/value cache" if args.with_cache else "ONNX") if args.format == "onnx" else hf_architecture(spec.model)
    print(f"wrote {', '.join(written)} to {args.out} ({kind})")
    for note in hf_notes(spec.model):
        sys.stderr.write(f"tabula export: warning: {note}\n")
    return 0
