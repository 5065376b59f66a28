"""A run from a loaded spec: prepared once, then trained here or on DeepSpeed ranks.

    options = RunOptions(spec_path="specs/quickstart.yaml", max_steps=20)
    ready = prepare_run(spec, options, progress=terminal_progress())
    outcome = run_prepared(ready, console=Console())      # Outcome(reason, step, tokens, error, ...)

`prepare_run` is the one prologue of every run, local or DeepSpeed, in this order: where the ranks
run (DeepSpeed: --nproc, the hostfile), the resume target and the spec's changes since that run, the
data (the token cache, filled once before any rank reads it), the plan for the world size, the checks
a run needs before it starts (a budget of one batch at least, the resumed run's tokenizer, DeepSpeed's
view of its config), a checkpoint saved by another engine or layout made loadable (runtime/reshard.py),
and the run folder (new, or the resumed one with this resume recorded in its manifest).

Everything here raises typed errors (runtime/errors.py, `SpecErrors` for the plan, `DataError`) and
returns values; the `tabula run` command turns them into text and exit codes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ResumeRefused, RunFolderDamaged, RunInputError
from .rundir import RunDir
from .runlock import RunLock

if TYPE_CHECKING:
    from tabula.compiler.plan import Plan
    from tabula.schemas.diff import Change
    from tabula.schemas.spec import Spec

    from .console import Console
    from .data.pipeline import PreparedData
    from .data.progress import Progress
    from .loop import EndReason, Outcome
    from .checkpoint import Selection, Skipped
    from .reshard import Move


@dataclass(frozen=True)
class RunOptions:
    """How to run a spec: what `tabula run` takes besides the spec itself."""

    spec_path: str  # as the user wrote it: DeepSpeed ranks load it again; resume hints name it
    overrides: tuple[str, ...] = ()  # `a.b.c=value`, already applied to the spec; ranks apply them again
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps of this call
    run_dir: Path | None = None  # a new run's folder (absent or empty); default track.runs_dir/<name>-<time>
    resume: str | None = None  # a run folder, one checkpoint folder, or "auto" (the newest run of this spec)
    nproc: int | None = None  # DeepSpeed ranks on this machine; default parallel.world_size
    cache_dir: Path | None = None  # the token cache; default $TABULA_CACHE_DIR or the user's cache
    command: tuple[str, ...] | None = None  # the command line recorded in manifest.json; default sys.argv
    allow_extends_outside: bool = False  # the spec was loaded with --allow-extends-outside (a child process reloads it)


@dataclass(frozen=True)
class Ranks:
    """Where a DeepSpeed run's ranks run: `world_size` ranks, over the nodes of `hostfile` or on this machine."""

    world_size: int
    hostfile: Path | None = None


@dataclass(frozen=True)
class Resume:
    """A resumed run: its folder, the checkpoint it continues from, the compatible spec changes applied
    (empty when the spec is the same) and the move of a checkpoint saved by another engine or layout
    (None when it loads as saved)."""

    run: RunDir
    checkpoint: Path
    changes: tuple[Change, ...] = ()
    move: Move | None = None
    skipped: tuple[Skipped, ...] = ()  # newer checkpoints passed over as damaged, each with its reason
    notes: tuple[str, ...] = ()  # other runs passed over (--resume auto: an unreadable manifest), one line each


@dataclass(frozen=True)
class PreparedRun:
    """Everything a run needs before its first step; its folder exists."""

    spec: Spec
    options: RunOptions
    plan: Plan
    data: PreparedData
    spec_hash: str
    run: RunDir
    device_type: str  # "cuda" | "cpu"
    ranks: Ranks | None = None  # None: one local process
    resume: Resume | None = None
    lock: RunLock | None = field(default=None, compare=False, repr=False)  # this session's hold on the folder
    events_offset: int = 0  # the size of events.jsonl when this session began: its events follow

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the run continues from, or None for a fresh run."""
        return self.resume.checkpoint if self.resume is not None else None

    def release(self) -> None:
        """Let another session take the run folder (run_prepared does, once the run has ended)."""
        if self.lock is not None:
            self.lock.release()


def wants_ranks(spec: Spec, nproc: int | None) -> bool:
    """Whether a run trains on ranks (more than one, or backend deepspeed / fsdp) rather than in this process."""
    return (nproc or spec.parallel.world_size) > 1 or spec.parallel.backend in ("deepspeed", "fsdp")


# ---------------------------------------------------------------- resume


def find_resume_target(spec: Spec, options: RunOptions, notes: list[str] | None = None) -> tuple[RunDir, Selection] | None:
    """(run folder, the checkpoint to resume and the damaged ones skipped) that `options.resume` names, or
    None without --resume. Raises RunInputError when there is none to resume from (or the one named is
    damaged, or its manifest is). `notes` collects the runs --resume auto passed over."""
    from .checkpoint import CheckpointError
    from .rundir import find_resume

    if not options.resume:
        return None
    if options.run_dir:
        raise RunInputError("--run-dir and --resume exclude each other: a resumed run continues in its own folder")
    try:
        return find_resume(options.resume, spec, notes=notes)
    except (FileNotFoundError, CheckpointError) as error:
        raise RunInputError(str(error)) from None
    except OSError as error:
        raise RunInputError(f"--resume {options.resume}: {error.strerror or error}"
                            + (f": {error.filename}" if error.filename else "")) from None


def resume_changes(spec: Spec, run: RunDir) -> list[Change]:
    """The changes from the spec `run` was trained with to `spec` (as `tabula diff` lists them), when the
    checkpoint can follow them all. Raises ResumeRefused (with every change and the reasons) otherwise,
    RunFolderDamaged when the run's resolved.yaml no longer reads as a spec."""
    from tabula.compiler.impact import resume_compatibility
    from tabula.schemas.diff import diff_specs
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import load_spec

    from .rundir import RESOLVED_FILE

    path = run.path / RESOLVED_FILE
    if path.exists() and not path.is_file():  # a folder, a pipe or a device: nothing a spec is read from
        raise RunFolderDamaged(path, "is not a file", "it is the spec the run was trained with, needed to check the resume")
    try:
        old = load_spec(path)
    except SpecErrors as errors:
        first = errors.errors[0] if errors.errors else None
        where = f"line {first.line}: " if first is not None and first.line else ""
        dotted = ".".join(str(p) for p in first.path) + ": " if first is not None and first.path else ""
        what = f"{where}{dotted}{first.message}" if first is not None else "unreadable"
        reason = "is missing" if not path.exists() else f"is damaged ({what})"
        raise RunFolderDamaged(path, reason, "it is the spec the run was trained with, needed to check the resume; "
                                             "restore it from a copy of the run (its sha256 is manifest.json's spec_hash)"
                               ) from None
    changes = diff_specs(old, spec)
    if not changes:
        return []
    compatible, reasons = resume_compatibility(old, spec)
    if not compatible:
        raise ResumeRefused(run.name, changes, reasons)
    return changes


def check_run_files(run: RunDir) -> None:
    """Raises RunFolderDamaged when a file the resumed session appends to is something else (events.jsonl a
    folder, ...). A missing events.jsonl is started again; a torn last line is closed by the EventWriter."""
    from .rundir import CHECKPOINTS_DIR

    events = run.events
    if events.is_symlink() or (events.exists() and not events.is_file()):
        raise RunFolderDamaged(events, "is not a file (the run's event log must be one): move it away to resume")
    checkpoints = run.path / CHECKPOINTS_DIR
    if checkpoints.exists() and not checkpoints.is_dir():
        raise RunFolderDamaged(checkpoints, "is not a folder")


def _reshard(spec: Spec, checkpoint: Path, ranks: Ranks | None) -> Move | None:
    """Make `checkpoint` loadable by this run's engine and layout; the move made, or None when it loads as
    saved. Raises RunInputError when the optimizer state cannot be kept."""
    from .parallel.convert import FsdpConvertError, has_fsdp_state, prepare_fsdp_resume, write_local_optimizer
    from .reshard import DS_DIR, ReshardError, prepare_local_resume, prepare_resume

    try:
        if spec.parallel.backend == "fsdp" and ranks is not None:
            return prepare_fsdp_resume(checkpoint, ranks.world_size, spec.parallel.tensor.size)
        if has_fsdp_state(checkpoint):  # to DeepSpeed or the local engine: its optimizer.pt first
            write_local_optimizer(checkpoint)
        if ranks is not None:
            move = prepare_resume(checkpoint, spec.parallel.zero.stage, ranks.world_size, spec=spec,
                                  pipeline_stages=spec.parallel.pipeline.stages)
            return move if move.changes else None
        if not (checkpoint / DS_DIR).is_dir():
            return None  # a local checkpoint: the local engine reads it as it is
        import os

        import torch

        if not torch.cuda.is_available():  # DeepSpeed, imported to read its files, warns it found no GPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return prepare_local_resume(checkpoint)
    except (ReshardError, FsdpConvertError, OSError) as error:
        raise RunInputError(f"cannot resume from {checkpoint}: {error}") from None


# ---------------------------------------------------------------- the run folder


def open_run(spec: Spec, options: RunOptions, *, data: PreparedData, spec_hash: str, resume: Resume | None,
             lock: RunLock | None = None) -> tuple[RunDir, RunLock | None]:
    """Create the run folder, locked (fresh run), or record this resume in the resumed run's manifest (its
    `lock` taken already). Returns the run and this session's lock. Raises RunInputError when a new run's
    folder cannot be created (not empty, a full disk, a read-only file system ...) or the resume cannot be
    recorded."""
    from tabula.schemas.canonical import canonical_yaml

    from .rundir import RESOLVED_FILE, build_manifest, create_run, new_run_path, write_atomically

    command = list(options.command if options.command is not None else sys.argv)
    if resume is not None:
        run = resume.run
        manifest = run.read_manifest()
        changes = [{"path": c.path, "kind": c.kind, "old": c.old, "new": c.new} for c in resume.changes]
        manifest.setdefault("resumes", []).append({"time": time.time(), "command": command, "spec_hash": spec_hash,
                                                   "changes": changes})
        try:
            if changes:
                write_atomically(run.path / RESOLVED_FILE, canonical_yaml(spec))
                manifest["spec_hash"] = spec_hash
            run.write_manifest(manifest)
        except OSError as error:
            raise RunInputError(f"cannot record this resume in {run.manifest_path}: {error.strerror or error}") from None
        _log_skipped(run, resume)
        return run, lock
    path = Path(options.run_dir) if options.run_dir else new_run_path(spec.track.runs_dir, spec.name)
    source = spec.source_path
    try:
        spec_text = Path(source).read_text(encoding="utf-8") if source else canonical_yaml(spec)
    except (OSError, UnicodeDecodeError):  # the spec file changed since it was loaded: record what was loaded
        spec_text = canonical_yaml(spec)
    for attempt in range(NAME_ATTEMPTS):
        manifest = build_manifest(spec, spec_hash=spec_hash, prepared=data, command=command,
                                  overrides=list(options.overrides), run_name=path.name)
        try:
            return create_run(path, spec_text=spec_text, resolved_yaml=canonical_yaml(spec), manifest=manifest,
                              tokenizer_json=data.tokenizer_json, command=command)
        except RunInputError:
            # a run started in the same second took the name this one chose: the next suffix (a name the user
            # gave with --run-dir is theirs: refused)
            if options.run_dir or attempt == NAME_ATTEMPTS - 1 or not os.path.lexists(path):
                raise
            path = new_run_path(spec.track.runs_dir, spec.name)
    raise AssertionError("unreachable")


NAME_ATTEMPTS = 5  # runs of one spec started in the same second


def _log_skipped(run: RunDir, resume: Resume) -> None:
    """A warning event for each damaged checkpoint the resume passed over (the dashboard shows them; the
    CLI prints `resume.skipped` itself)."""
    if not resume.skipped:
        return
    from .checkpoint import read_state
    from .events import EventWriter

    state = read_state(resume.checkpoint)
    writer = EventWriter(run.events)
    for skipped in resume.skipped:
        writer.log("warning", f"{skipped.message}; resuming from {resume.checkpoint.name}",
                   state.get("step", 0), state.get("tokens", 0))
    writer.close()


# ---------------------------------------------------------------- the prologue


def prepare_run(spec: Spec, options: RunOptions, *, progress: Progress | None = None) -> PreparedRun:
    """Everything before a run's first step, for the local engine and DeepSpeed ranks alike (see the
    module docstring); `progress` shows the data preparation (data.progress.terminal_progress).

    Raises RunInputError (ResumeRefused, LaunchError, RunLocked, RunFolderDamaged, NotEnoughMemory) for a
    run that cannot start as asked, DataError for bad data, SpecErrors for a spec the plan refuses. A
    resumed run's folder is locked for this session first, before anything reads or writes it; a new run's
    folder is checked first and created (locked) last, so a refused run leaves nothing behind. The
    PreparedRun holds the lock until `run_prepared` ends (or `release()`)."""
    from .rundir import check_new_run_path, new_run_path

    ranks = None
    if wants_ranks(spec, options.nproc):
        from .launch import ranks_for

        ranks = ranks_for(spec, options.nproc)
    notes: list[str] = []
    target = find_resume_target(spec, options, notes)
    if target is None:  # where the new folder goes, checked before the data is prepared (which may take long)
        check_new_run_path(Path(options.run_dir) if options.run_dir else new_run_path(spec.track.runs_dir, spec.name))
        return _prepare(spec, options, ranks, None, (), progress, None)
    command = list(options.command if options.command is not None else sys.argv)
    lock = RunLock.acquire(target[0].path, command=command)  # before anything reads or writes the folder
    try:
        return _prepare(spec, options, ranks, target, tuple(notes), progress, lock)
    except BaseException:
        lock.release()
        raise


def _prepare(spec: Spec, options: RunOptions, ranks: Ranks | None, target: tuple[RunDir, Selection] | None,
             notes: tuple[str, ...], progress: Progress | None, lock: RunLock | None) -> PreparedRun:
    """prepare_run's steps once the resumed run (if any) is this session's."""
    from tabula.compiler import make_plan
    from tabula.schemas.canonical import spec_hash as hash_of

    from .data import prepare
    from .data.cache import cache_root
    from .engine import pick_device
    from .memory import check_memory

    if target is not None:
        target[0].read_manifest()  # damaged since find_resume looked (before the lock): say so now
        check_run_files(target[0])
    changes: Sequence[Change] = resume_changes(spec, target[0]) if target is not None else ()
    data = prepare(spec, cache_dir=options.cache_dir, progress=progress)
    if target is not None:
        run = target[0]
        recorded = run.read_manifest().get("data")
        recorded = recorded.get("tokenizer_hash") if isinstance(recorded, dict) else None
        if recorded and recorded != data.tokenizer_hash:
            raise RunInputError(f"the tokenizer differs from the one {run.name} was trained with (hash {str(recorded)[:12]}, now "
                                f"{data.tokenizer_hash[:12]}): token ids would change meaning. Start a new run instead.")
    device_type = pick_device().type
    plan = make_plan(spec, world_size=ranks.world_size if ranks else None, vocab_size=data.vocab_size,
                     device_type=device_type, compile_cache=cache_root(options.cache_dir), max_steps=options.max_steps)
    if plan.total_steps == 0:
        raise RunInputError(f"the budget ({plan.budget_tokens} tokens) is smaller than one batch ({plan.batch_tokens} "
                            f"tokens): nothing to train")
    if ranks is not None and spec.parallel.backend == "deepspeed":
        from .launch import check_deepspeed_config

        check_deepspeed_config(spec, plan)
    if spec.model.init.kind == "from":  # pretrained weights found and fitting, before a run folder exists
        from .pretrained import check_pretrained

        check_pretrained(spec, plan.vocab_size)
    # DeepSpeed on GPUs: each rank checks its own device (a CUDA context here would take a rank's memory)
    check_memory(spec, plan, pick_device(), ranks_here=_ranks_here(ranks), spec_path=options.spec_path,
                 device_side=ranks is None)
    resume = None
    if target is not None:
        from .checkpoint import remove_leftovers

        run, selection = target
        assert selection.checkpoint is not None  # find_resume refuses a run with no intact checkpoint
        remove_leftovers(run.path)  # before anything is written: a full disk's space comes back first
        resume = Resume(run, selection.checkpoint, tuple(changes), _reshard(spec, selection.checkpoint, ranks),
                        skipped=selection.skipped, notes=notes)
    spec_hash = hash_of(spec)
    run_dir, lock = open_run(spec, options, data=data, spec_hash=spec_hash, resume=resume, lock=lock)
    try:
        if lock is not None and lock.note:
            from .events import EventWriter

            with EventWriter(run_dir.events) as writer:
                writer.log("warning", lock.note, 0, 0)
        return PreparedRun(spec=spec, options=options, plan=plan, data=data, spec_hash=spec_hash, run=run_dir,
                           device_type=device_type, ranks=ranks, resume=resume, lock=lock,
                           events_offset=_size(run_dir.events))
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _ranks_here(ranks: Ranks | None) -> int:
    """How many ranks share this machine's memory (a hostfile spreads them over nodes: one here, as far as
    this machine can tell)."""
    if ranks is None:
        return 1
    return 1 if ranks.hostfile is not None else ranks.world_size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- training


def run_local(ready: PreparedRun, *, console: Console | None = None) -> Outcome:
    """Train a prepared local run in this process; `console` receives rank 0's events (progress lines).
    Returns how the run ended; a run that fails is an Outcome with reason `failed`, not an error, whether it
    fails in the loop or before it (building the model: out of memory, ...), and its events end with `end`."""
    from .build import build_local_engine
    from .engine import pick_device
    from .loop import train

    device = pick_device()
    try:
        engine = build_local_engine(ready.spec, ready.plan, device)
        return train(ready.spec, ready.plan, engine, ready.run, ready.data, spec_hash=ready.spec_hash,
                     max_steps=ready.options.max_steps, resume_from=ready.checkpoint, console=console,
                     parameters=sum(p.numel() for p in engine.model.parameters()))
    except Exception as error:  # noqa: BLE001 - whatever ends the session is recorded as its end
        return failed_outside_loop(ready, error, console=console, device=device)
    except KeyboardInterrupt:  # Ctrl-C before the loop took over the signals: nothing trained, nothing lost
        return end_session(ready, "stopped", "interrupted before the first step", console=console, signal="SIGINT")


def run_prepared(ready: PreparedRun, *, console: Console | None = None, out: TextIO | None = None) -> Outcome:
    """Train a prepared run: in this process (`console` gets the events), or on its DeepSpeed ranks, whose
    progress lines (rank 0's console) and the launcher's own lines go to `out` (default stdout). The run
    folder's lock is released when the run has ended."""
    try:
        if ready.ranks is None:
            return run_local(ready, console=console)
        from .launch import launch

        return launch(ready, out=out or sys.stdout)
    finally:
        ready.release()


def failed_outside_loop(ready: PreparedRun, error: BaseException, *, console: Console | None = None,
                        device: Any = None) -> Outcome:
    """The Outcome of a session that failed outside the train loop (building the engine, or an error the
    loop did not catch), with its `end` event written unless the loop wrote one: a memory failure with the
    plan's numbers; anything else in one line, its traceback in RUN_DIR/error.log."""
    import traceback

    from .checkpoint import CheckpointError
    from .data.errors import DataError
    from .memory import allocation_message, is_allocation_failure

    if device is not None and is_allocation_failure(error):
        message = allocation_message(error, ready.spec, ready.plan, device)
    elif isinstance(error, (DataError, CheckpointError)):
        message = str(error)
    else:
        log = ready.run.append_error_log("".join(traceback.format_exception(error)))
        message = f"{type(error).__name__}: {error}" + (f" (traceback in {log})" if log else "")
    return end_session(ready, "failed", message, console=console)


def end_session(ready: PreparedRun, reason: EndReason, message: str | None, *, console: Console | None = None,
                signal: str | None = None) -> Outcome:
    """The Outcome of a session that ended outside the train loop, its `end` event (`reason`, `message` as
    its error) written unless this session wrote one already; at the step of the checkpoint it resumed."""
    from .checkpoint import list_checkpoints, read_state
    from .loop import Outcome

    step = tokens = 0
    if ready.checkpoint is not None:
        try:
            state = read_state(ready.checkpoint)
            step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    if not ended_since(ready.run.events, ready.events_offset):
        from .events import EventWriter

        try:
            with EventWriter(ready.run.events) as writer:
                if console is not None:
                    writer.listeners.append(console)
                writer.emit("end", step, tokens, reason=reason, error=message)
        except OSError:
            pass  # the folder cannot take it (a full disk): the Outcome still says why
    checkpoints = list_checkpoints(ready.run.path)
    return Outcome(reason, step, tokens, error=message, checkpoint=checkpoints[-1] if checkpoints else None,
                   signal=signal)


def ended_since(events: Path, offset: int) -> bool:
    """Whether an `end` event was written to `events` after byte `offset` (this session's own)."""
    from .events import read_events

    try:
        return any(event.get("kind") == "end" for event in read_events(events, offset=offset))
    except OSError:
        return False

