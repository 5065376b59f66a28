"""Generate text from a model, streamed to stdout as it is produced.

    tabula generate RUN_DIR --prompt "def "              the run's newest checkpoint, its tokenizer
    tabula generate SPEC --prompt-file prompt.txt        the spec's model (seeded init or model.init's weights)
    tabula generate HF_DIR --prompt "Hello" --json       a transformers folder (tabula export's, or an importable one)

Greedy by default (--temperature 0); --temperature, --top-k, --top-p, --min-p and --repetition-penalty
sample, --seed makes it reproducible. Generation ends at the model's end-of-text token, a --stop string
(not printed), a --stop-token-id, --max-new-tokens or the end of the model's context. --json prints one
JSON object instead: the prompt's ids, each new token with its log-probability, the text and why it ended.
A prompt longer than the context is refused, or cut to its last tokens with --on-long-prompt truncate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tabula.exit_codes import ExitCode

HELP = "generate text from a run, a spec or a Hugging Face folder (streamed; --json with log-probabilities)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tabula.report import add_extends_flag

    parser.add_argument("source", metavar="RUN_DIR|SPEC|HF_DIR",
                        help="a run folder (or one checkpoint folder), a spec file, or a folder with config.json and safetensors")
    parser.add_argument("overrides", nargs="*", metavar="a.b=v", help="overrides for a spec, e.g. model.n_layers=2 (values are YAML)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="FILE", help="a UTF-8 file whose text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="most tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy; higher samples more freely")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest tokens only (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="sample among the likeliest tokens reaching probability P (1: all)")
    parser.add_argument("--min-p", type=float, default=0.0, metavar="P",
                        help="drop tokens less likely than P times the likeliest one's probability (0: none)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                        help="above 1 makes the prompt's and the output's tokens less likely (1: off)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the output before this text (repeatable)")
    parser.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID", help="end the output at this token id (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the model's end-of-text token")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling: the same seed gives the same output")
    parser.add_argument("--json", action="store_true", help="print one JSON object: tokens with their log-probabilities, text, finish reason")
    parser.add_argument("--on-long-prompt", choices=["refuse", "truncate"], default="refuse",
                        help="a prompt longer than the model's context: refuse it (exit 2, the default) or keep its last tokens, with a warning")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    add_extends_flag(parser)
    # Hook for the quantization and speculative-decoding flags (--quantize, --draft): add them here and apply
    # them in `build_generator`, which every other step of this command goes through.


class BadInput(Exception):
    """One line for the user; exit 2."""


def build_generator(args: argparse.Namespace) -> Any:
    """The Generator the command runs (load_generator over args.source). Raises RunInputError, SpecErrors."""
    from tabula.runtime.inference import load_generator

    return load_generator(args.source, device=args.device, overrides=args.overrides,
                          allow_extends_outside=args.allow_extends_outside)


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return str(args.prompt)
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--prompt-file {args.prompt_file}: {getattr(error, 'strerror', None) or error}") from None


def _params(args: argparse.Namespace) -> Any:
    from tabula.runtime.inference import SamplingParams

    try:
        return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              min_p=args.min_p, repetition_penalty=args.repetition_penalty, stop=tuple(args.stop),
                              stop_token_ids=tuple(args.stop_token_id), ignore_eos=args.ignore_eos, seed=args.seed)
    except ValueError as error:
        raise BadInput(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from tabula.report import print_errors
    from tabula.runtime.errors import RunInputError
    from tabula.schemas.errors import SpecErrors

    try:
        params = _params(args)
        text = _prompt(args)
        generator = build_generator(args)
        if generator.tokenizer is None:
            raise BadInput(f"{args.source}: no tokenizer found (a run's tokenizer.json, a spec's tokenizer file or prepared data, "
                           f"a folder's tokenizer.json)")
        ids, dropped = generator.prompt_ids(text, args.on_long_prompt)
    except BadInput as error:
        sys.stderr.write(f"tabula generate: {error}\n")
        return ExitCode.BAD_INPUT
    except RunInputError as error:
        sys.stderr.write(f"tabula generate: {error}\n")
        return ExitCode.BAD_INPUT
    except SpecErrors as error:
        print_errors(error.errors)
        return ExitCode.BAD_INPUT
    if dropped:
        sys.stderr.write(f"tabula generate: warning: the prompt's first {dropped} tokens were dropped to fit the model's context "
                         f"of {generator.context}\n")
    sequence = generator.sequences([ids], params)[0]
    sequence.truncated = dropped
    out = sys.stdout
    for chunk in generator.run([sequence]):
        if not args.json and chunk.text:
            out.write(chunk.text)
            out.flush()
    completion = sequence.completion()
    if args.json:
        tokenizer = generator.tokenizer
        record = {
            "prompt": text, "prompt_ids": completion.prompt_ids, "truncated": completion.truncated,
            "tokens": [{"id": token, "token": tokenizer.id_to_token(token), "logprob": logprob}
                       for token, logprob in zip(completion.token_ids, completion.logprobs)],
            "text": completion.text, "finish_reason": completion.finish_reason, "stop": completion.stop,
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        out.write("\n")
    return ExitCode.OK
