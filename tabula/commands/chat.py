"""Chat with a trained model in a terminal playground: a prompt box, sampling controls (temperature,
top-p, max tokens), the answer streamed as it is generated, tokens/s and the KV cache's size live.

A run trained on conversations (chat or instruction sources) is prompted through its chat template and
the conversation so far; any other model continues the conversation's text. Keys: Enter sends, Escape
stops an answer, Ctrl+L clears the conversation, Ctrl+Q quits.
Exit status: 0 when the playground is closed, 2 when RUN_DIR cannot be loaded or the quantization cannot
be done on the device.
"""

from __future__ import annotations

import argparse
import sys

from tabula.exit_codes import ExitCode

HELP = "chat with a trained model in a terminal playground (streamed answers, sampling controls)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder or checkpoint folder (its newest intact checkpoint, its tokenizer)")
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None,
                        help="weight-only quantization of the model's Linear layers (torchao): less memory, on a CPU slower")
    parser.add_argument("--group-size", type=int, default=None, metavar="N",
                        help="inputs sharing a quantization scale (int4 default: the largest of 128, 64, 32, 16 that fits)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")


def run(args: argparse.Namespace) -> int:
    if not sys.stdout.isatty():
        sys.stderr.write("tabula chat: error: the playground needs a terminal; use `tabula generate` to generate from a script\n")
        return ExitCode.BAD_INPUT
    from tabula.runtime.errors import RunInputError
    from tabula.runtime.inference.chat import load_chat
    from tabula.schemas.errors import SpecErrors

    try:
        session = load_chat(args.run_dir, device=args.device, quantize=args.quantize, group_size=args.group_size)
    except (RunInputError, SpecErrors) as error:
        sys.stderr.write(f"tabula chat: {str(error).splitlines()[0]}\n")
        return ExitCode.BAD_INPUT
    if session.generator.tokenizer is None:
        sys.stderr.write(f"tabula chat: {args.run_dir}: no tokenizer found (the run's tokenizer.json)\n")
        return ExitCode.BAD_INPUT
    from tabula.tui.app import ChatApp

    ChatApp(session).run()
    return ExitCode.OK
