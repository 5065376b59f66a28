"""Train the experiment a spec describes, recording it in a run directory.

  tabula run specs/quickstart.yaml                       dashboard in a terminal, lines otherwise
  tabula run specs/quickstart.yaml train.budget.tokens=1M --headless
  tabula run specs/quickstart.yaml --max-steps 20        stop after 20 steps, with a checkpoint
  tabula run specs/quickstart.yaml --resume auto         continue the newest run of this spec
  tabula run specs/quickstart.yaml --resume runs/quickstart-20261128-101500

A resumed run continues exactly (bit-identical on the CPU). Resuming with a changed spec shows the
changes: compatible ones (budget, schedule, intervals, mixture, curriculum, batch) are applied and
recorded in manifest.json; incompatible ones (shapes) are refused with the reason.
SIGINT/SIGTERM (or `touch RUN_DIR/control/stop`) stop after the current step with a checkpoint.
Exit codes: 0 finished or stopped, 2 bad input, 3 the run failed (130/143 after SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import sys

HELP = "train a spec (dashboard in a terminal, progress lines with --headless)"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, found {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--headless", action="store_true", help="print progress lines instead of opening the dashboard")
    parser.add_argument("--max-steps", type=_positive, metavar="N", help="stop after N optimizer steps of this call, with a checkpoint")
    parser.add_argument("--run-dir", metavar="DIR", help="write the run here instead of track.runs_dir/<name>-<time>")
    parser.add_argument("--resume", metavar="DIR|auto", help="continue a run folder (or one checkpoint folder); auto: the newest run of this spec")
    parser.add_argument("--nproc", type=_positive, metavar="N", help="ranks on this machine (DeepSpeed); default parallel.world_size")
    parser.add_argument("--cache-dir", metavar="DIR", help="token cache folder (default: TABULA_CACHE_DIR or the user's cache)")


def run(args: argparse.Namespace) -> int:
    from tabula.runtime.session import EXIT_BAD_INPUT, load_run_spec

    spec = load_run_spec(args.spec, args.overrides, allow_extends_outside=args.allow_extends_outside)
    if spec is None:
        return EXIT_BAD_INPUT
    world_size = args.nproc or spec.parallel.world_size
    distributed = world_size > 1 or spec.parallel.backend == "deepspeed"
    refused = world_size > 1 and spec.parallel.backend != "deepspeed"  # launch() says why, before any dashboard
    if not args.headless and not refused and sys.stdout.isatty():
        return _with_dashboard(args, spec, distributed)
    return _train_here(args, spec, distributed)


def _train_here(args: argparse.Namespace, spec, distributed: bool) -> int:
    """Train in this process (local), or launch and watch the DeepSpeed ranks from it."""
    if distributed:
        from tabula.runtime.launch import launch

        return launch(args, spec)
    from tabula.runtime.session import run_local

    return run_local(args, spec)


def _with_dashboard(args: argparse.Namespace, spec, distributed: bool) -> int:
    """The training in its own process (headless, at a known run folder), the dashboard beside it.
    For DeepSpeed the child is `tabula run --headless --nproc N`, which launches the ranks itself."""
    try:
        from tabula.tui.launch import run_with_dashboard
    except ImportError:  # textual missing: progress lines here, as --headless would
        return _train_here(args, spec, distributed)
    from tabula.runtime.session import EXIT_BAD_INPUT, child_command

    command, run_dir = child_command(args, spec)
    if command is None:
        return EXIT_BAD_INPUT
    return run_with_dashboard(command, run_dir)
