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
Exit codes: 0 finished or stopped, 2 bad input (nothing ran: a spec, flag, path, a run folder in use
or damaged, a model larger than the free memory), 3 the run failed (its traceback, for an unexpected
error, in RUN_DIR/error.log), 130/143 stopped with a checkpoint by SIGINT/SIGTERM.
TABULA_NO_MEMORY_CHECK=1 starts a run the memory check would refuse (an estimate wrong for a model).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tabula.exit_codes import ExitCode, stopped_by
from tabula.report import positive_int

if TYPE_CHECKING:
    from tabula.runtime.loop import Outcome
    from tabula.runtime.session import PreparedRun, RunOptions
    from tabula.schemas.diff import Change
    from tabula.schemas.spec import Spec

HELP = "train a spec (dashboard in a terminal, progress lines with --headless)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--headless", action="store_true", help="print progress lines instead of opening the dashboard")
    parser.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N optimizer steps of this call, with a checkpoint")
    parser.add_argument("--run-dir", metavar="DIR", help="write the run here instead of track.runs_dir/<name>-<time>")
    parser.add_argument("--resume", metavar="DIR|auto", help="continue a run folder (or one checkpoint folder); auto: the newest run of this spec")
    parser.add_argument("--nproc", type=positive_int, metavar="N", help="ranks (DeepSpeed or fsdp; across every node for a multi-node fsdp run); default parallel.world_size")
    parser.add_argument("--node-rank", type=positive_int, metavar="K",
                        help="join a multi-node fsdp run as node K (1 .. parallel.nodes-1): start this node's ranks in node 0's "
                             "--run-dir (a shared file system) and meet at parallel.rendezvous")
    parser.add_argument("--cache-dir", metavar="DIR", help="token cache folder (default: TABULA_CACHE_DIR or the user's cache)")


def run(args: argparse.Namespace) -> int:
    from tabula.report import load_spec_or_report
    from tabula.runtime.errors import TabulaError
    from tabula.schemas.errors import SpecErrors

    spec = load_spec_or_report(args.spec, args.overrides, allow_extends_outside=args.allow_extends_outside)
    if spec is None:
        return ExitCode.BAD_INPUT
    options = run_options(args)
    if args.node_rank:
        return _join(options, spec, args.node_rank)
    refused = (options.nproc or spec.parallel.world_size) > 1 and spec.parallel.backend not in ("deepspeed", "fsdp")
    try:
        # ranks without DeepSpeed: the runtime says why here, before any dashboard opens on a child that would fail
        if not args.headless and not refused and sys.stdout.isatty():
            return _with_dashboard(options, spec)
        return _train_here(options, spec)
    except (TabulaError, SpecErrors) as error:
        return report_error(error)
    except Exception as error:  # noqa: BLE001 - a bug before the run started: one line, the traceback in a file
        return report_crash(error, None)


def run_options(args: argparse.Namespace) -> RunOptions:
    """The runtime's options from the command's arguments; the command line is recorded as `tabula run ...`."""
    from tabula.runtime.session import RunOptions

    argv = sys.argv
    command = ("tabula", "run", *argv[2:]) if len(argv) > 1 and argv[1] == "run" else tuple(argv)
    return RunOptions(spec_path=args.spec, overrides=tuple(args.overrides), max_steps=args.max_steps,
                      run_dir=Path(args.run_dir) if args.run_dir else None, resume=args.resume, nproc=args.nproc,
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None, command=command,
                      allow_extends_outside=args.allow_extends_outside)


def report_error(error: Exception) -> int:
    """Print why a run could not start (spec errors as `tabula validate` shows them; a refused resume
    lists the spec's changes on stdout first) and return the exit code: bad input, nothing ran."""
    from tabula.report import print_errors
    from tabula.runtime.errors import ResumeRefused
    from tabula.schemas.errors import SpecErrors

    if isinstance(error, SpecErrors):
        print_errors(error.errors)
        return ExitCode.BAD_INPUT
    if isinstance(error, ResumeRefused):
        print("\n".join(change_lines(error.run_name, error.changes)), flush=True)
    sys.stderr.write(f"tabula run: {error}\n")
    sys.stderr.flush()
    return ExitCode.BAD_INPUT


def change_lines(run_name: str, changes: tuple[Change, ...]) -> list[str]:
    """The spec's changes since the run it resumes, as `tabula diff` lists them."""
    return [f"The spec differs from the one {run_name} was trained with:", *(f"  {change.line()}" for change in changes)]


def _train_here(options: RunOptions, spec: Spec) -> int:
    """Train in this process (local), or launch and watch the DeepSpeed ranks from it (prepare_run decides:
    session.wants_ranks)."""
    from tabula.runtime.console import Console
    from tabula.runtime.data import terminal_progress
    from tabula.runtime.session import prepare_run, run_prepared

    ready = prepare_run(spec, options, progress=terminal_progress(sys.stderr))
    try:
        if ready.resume is not None:
            for note in ready.resume.notes:
                sys.stderr.write(f"tabula run: warning: {note}\n")
            for skipped in ready.resume.skipped:
                sys.stderr.write(f"tabula run: warning: {skipped.message}; resuming from {ready.resume.checkpoint.name}\n")
        for line in prepared_lines(ready):
            print(line)
        sys.stdout.flush()
        outcome = run_prepared(ready, console=Console(), out=sys.stdout)
        return exit_code(ready, outcome)
    except Exception as error:  # noqa: BLE001 - a started run that crashed: failed (3), as under the dashboard
        return report_crash(error, ready)
    finally:
        ready.release()


def _join(options: RunOptions, spec: Spec, node_rank: int) -> int:
    """Node `node_rank` of a multi-node fsdp run: its token cache, then its ranks (launch.join_run), in the
    folder node 0 writes (--run-dir), or resuming with node 0 (--resume: the same checkpoint node 0 picks)."""
    from tabula.runtime.checkpoint import CheckpointError
    from tabula.runtime.data import prepare, terminal_progress
    from tabula.runtime.errors import TabulaError
    from tabula.runtime.launch import check_join, join_run
    from tabula.runtime.rundir import find_resume

    if (options.run_dir is None) == (options.resume is None):
        sys.stderr.write("tabula run: --node-rank needs --run-dir (the folder node 0 writes, on a shared file system) "
                         "or --resume (the run node 0 resumes), one of them\n")
        return ExitCode.BAD_INPUT
    try:
        check_join(spec, node_rank)  # before the data is prepared
        checkpoint, run_dir = None, options.run_dir
        if options.resume:
            try:
                run, selection = find_resume(options.resume, spec)
            except (FileNotFoundError, CheckpointError) as error:
                sys.stderr.write(f"tabula run: {error}\n")
                return ExitCode.BAD_INPUT
            checkpoint, run_dir = selection.checkpoint, run.path
        assert run_dir is not None
        prepare(spec, cache_dir=options.cache_dir, progress=terminal_progress(sys.stderr))  # this node's token cache
        outcome = join_run(spec, options.spec_path, run_dir, node_rank, overrides=options.overrides,
                           nproc=options.nproc, cache_dir=str(options.cache_dir) if options.cache_dir else None,
                           out=sys.stdout, resume_from=checkpoint)
    except TabulaError as error:
        return report_error(error)
    if outcome.reason == "failed":
        print(f"run failed: {outcome.error}")
        return ExitCode.RUN_FAILED
    print(f"node {node_rank}: the run {outcome.reason} at step {outcome.step}")
    return ExitCode.OK


def report_crash(error: BaseException, ready: PreparedRun | None) -> int:
    """An unexpected error (a bug, not bad input): one line on stderr, the traceback in RUN_DIR/error.log
    (or a temporary file before the run folder exists), the run's `end` event written if it is missing.
    Returns RUN_FAILED."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(error))
    log = None
    if ready is not None:
        from tabula.runtime.session import end_session

        log = ready.run.append_error_log(text)
        try:
            end_session(ready, "failed", f"{type(error).__name__}: {error}" + (f" (traceback in {log})" if log else ""))
        except Exception:  # noqa: BLE001 - the report must not fail in its turn
            pass
    if log is None:
        try:
            fd, name = tempfile.mkstemp(prefix="tabula-error-", suffix=".log")
            with open(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            log = Path(name)
        except OSError:
            log = None
    where = f"; the traceback is in {log}" if log else ""
    sys.stderr.write(f"tabula run: unexpected error: {type(error).__name__}: {error}{where}\n")
    sys.stderr.flush()
    return ExitCode.RUN_FAILED


def prepared_lines(ready: PreparedRun) -> list[str]:
    """What a prepared run shows before its first step: the spec changes a resume applies, a checkpoint
    moved across engines or layouts, the plan's notes, the run folder (and the ranks)."""
    lines: list[str] = []
    resume = ready.resume
    if resume is not None and resume.changes:
        lines += change_lines(resume.run.name, resume.changes)
        lines.append("These changes are compatible with the checkpoint: applying them.")
    if resume is not None and resume.move is not None:
        through = " through a universal checkpoint" if ready.ranks is not None and ready.spec.parallel.backend != "fsdp" else ""
        lines.append(f"resuming {resume.move.text}{through}: weights and optimizer state kept")
    lines += [f"note: {note}" for note in ready.plan.notes]
    lines.append(f"run folder: {ready.run.path}")
    if ready.ranks is not None:
        ranks = ready.ranks
        where = (f"{ranks.world_size} ranks from {ranks.hostfile}" if ranks.hostfile
                 else f"{ranks.world_size} rank{'s' * (ranks.world_size > 1)} on this machine")
        parallel = ready.spec.parallel
        if parallel.backend == "fsdp":
            tensor = f" x tensor parallel {parallel.tensor.size}" if parallel.tensor.size > 1 else ""
            engine = f"FSDP2 (torchrun){tensor}"
        else:
            engine = f"DeepSpeed ZeRO-{parallel.zero.stage}"
        lines.append(f"{engine}, {where} ({ready.device_type}, {ready.plan.precision})")
    return lines


def exit_code(ready: PreparedRun, outcome: Outcome) -> int:
    """The exit code of a run that started (printing how to continue it, as a command that works): 3 failed,
    128 + N stopped by signal N, else 0."""
    hint = resume_command(ready.options, ready.run.path)
    if outcome.reason == "failed":
        if outcome.checkpoint is not None:
            print(f"the last good checkpoint is {outcome.checkpoint}; after fixing the cause: {hint}")
        return ExitCode.RUN_FAILED
    if outcome.reason == "stopped" and outcome.checkpoint is not None:
        print(f"stopped with a checkpoint; continue with: {hint}")
    if outcome.signal:
        return stopped_by(outcome.signal)
    return ExitCode.OK


def resume_command(options: RunOptions, run_dir: Path) -> str:
    """The command that continues the run in `run_dir` as it was started: the spec, its overrides (the run's
    resolved spec has them: without them the resume would see a changed spec), --nproc and --cache-dir,
    shell-quoted."""
    words = ["tabula", "run", options.spec_path, *options.overrides, "--resume", str(run_dir)]
    if options.nproc:
        words += ["--nproc", str(options.nproc)]
    if options.cache_dir:
        words += ["--cache-dir", str(options.cache_dir)]
    return shlex.join(words)


def _with_dashboard(options: RunOptions, spec: Spec) -> int:
    """The training in its own process (headless, at a known run folder), the dashboard beside it.
    For DeepSpeed the child is `tabula run --headless --nproc N`, which launches the ranks itself."""
    try:
        from tabula.tui.launch import run_with_dashboard
    except ImportError:  # textual missing: progress lines here, as --headless would
        return _train_here(options, spec)
    command, run_dir = child_command(options, spec)
    return run_with_dashboard(command, run_dir)


def child_command(options: RunOptions, spec: Spec) -> tuple[list[str], Path]:
    """The headless command the dashboard runs beside itself, and the run folder it will write. Raises
    RunInputError when --resume names nothing to resume."""
    from tabula.runtime.rundir import check_new_run_path, new_run_path
    from tabula.runtime.runlock import check_unlocked
    from tabula.runtime.session import find_resume_target

    argv = [sys.executable, "-m", "tabula.cli", "run", options.spec_path, *options.overrides, "--headless"]
    if options.max_steps:
        argv += ["--max-steps", str(options.max_steps)]
    if options.cache_dir:
        argv += ["--cache-dir", str(options.cache_dir)]
    if options.nproc:  # the child launches the DeepSpeed ranks itself
        argv += ["--nproc", str(options.nproc)]
    if options.allow_extends_outside:
        argv += ["--allow-extends-outside"]
    target = find_resume_target(spec, options)
    if target is not None:  # refused here, on the terminal, rather than in a dashboard on a child that would fail
        run, _ = target
        check_unlocked(run.path)
        return argv + ["--resume", str(run.path)], run.path
    run_dir = options.run_dir or new_run_path(spec.track.runs_dir, spec.name)
    check_new_run_path(Path(run_dir))
    return argv + ["--run-dir", str(run_dir)], run_dir
