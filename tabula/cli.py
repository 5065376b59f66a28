"""The `tabula` command: one sub-command a module under tabula/commands/ (named as the command, or
as MODULES says).

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and imports its heavy dependencies inside `run`, so `tabula --help` and `tabula validate`
start without torch.

Exit codes (tabula/exit_codes.py, the one table): 0 success, 1 "differs" (diff), 2 bad input (spec,
flag, path), 3 a run that failed; 130/143 a run stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tabula.version import version_line
from tabula.exit_codes import INTERRUPTED, ExitCode

COMMANDS = ["run", "validate", "plan", "prepare", "schema", "diff", "new", "watch", "export", "import", "cache", "generate", "chat", "serve", "runs", "compare", "lr-find", "eval", "inspect"]
# A command whose name is not its module's (`import` is a Python keyword).
MODULES = {"import": "import_model", "lr-find": "lr_find"}


class _Version(argparse.Action):
    """--version: asks git for the commit only when asked (every other command starts without it)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and one clear line, never a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(ExitCode.BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tabula",
        description="Declarative language-model training experiments: validate, plan, run, watch and compare YAML specs.",
        epilog=("Run `tabula COMMAND --help` for a command's options. Exit codes: 0 ok, 1 differs (diff), 2 bad input "
                "(nothing ran), 3 run failed, 130/143 a run stopped by SIGINT/SIGTERM (with its checkpoint)."),
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and the git commit) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.set_defaults(_parser=parser)
    for name in COMMANDS:
        module = importlib.import_module(f"tabula.commands.{MODULES.get(name, name)}")
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__ or module.HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_module=module, _parser=command)  # errors show the command's own usage
    return parser


# Third-party loggers whose warnings say nothing a tabula user can act on: torchao's CUDA-only kernel
# libraries failing to load on a CPU machine, torch's note to torchao about its enum registrations, the
# ONNX exporter's list of torchvision operators it skips (tabula's models use none).
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration")


def main(argv: list[str] | None = None) -> int:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    # Overrides may follow a flag (`tabula plan SPEC --json model.n_layers=2`): argparse stops
    # collecting positionals at the first flag, so the leftover `a.b=v` items are put back.
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    target = "overrides" if hasattr(args, "overrides") else "items" if hasattr(args, "items") else None
    if unknown or (overrides and target is None):
        args._parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides and target:  # (target is known here: overrides without one were refused above)
        setattr(args, target, [*getattr(args, target), *overrides])
    if args.command is None:
        parser.print_help()
        return ExitCode.BAD_INPUT
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
