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

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ResumeRefused, RunInputError
from .rundir import RunDir

if TYPE_CHECKING:
    from tabula.compiler.plan import Plan
    from tabula.schemas.diff import Change
    from tabula.schemas.spec import Spec

    from .console import Console
    from .data.pipeline import PreparedData
    from .data.progress import Progress
    from .loop import Outcome
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

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the run continues from, or None for a fresh run."""
        return self.resume.checkpoint if self.resume is not None else None


def wants_ranks(spec: Spec, nproc: int | None) -> bool:
    """Whether a run trains on DeepSpeed ranks (more than one, or backend deepspeed) rather than in this process."""
    return (nproc or spec.parallel.world_size) > 1 or spec.parallel.backend == "deepspeed"


# ---------------------------------------------------------------- resume


def find_resume_target(spec: Spec, options: RunOptions) -> tuple[RunDir, Selection] | None:
    """(run folder, the checkpoint to resume and the damaged ones skipped) that `options.resume` names, or
    None without --resume. Raises RunInputError when there is none to resume from (or the one named is
    damaged)."""
    from .checkpoint import CheckpointError
    from .rundir import find_resume

    if not options.resume:
        return None
    if options.run_dir:
        raise RunInputError("--run-dir and --resume exclude each other: a resumed run continues in its own folder")
    try:
        return find_resume(options.resume, spec)
    except (FileNotFoundError, CheckpointError) as error:
        raise RunInputError(str(error)) from None


def resume_changes(spec: Spec, run: RunDir) -> list[Change]:
    """The changes from the spec `run` was trained with to `spec` (as `tabula diff` lists them), when the
    checkpoint can follow them all. Raises ResumeRefused (with every change and the reasons) otherwise."""
    from tabula.compiler.impact import resume_compatibility
    from tabula.schemas.diff import diff_specs
    from tabula.schemas.loader import load_spec

    from .rundir import RESOLVED_FILE

    old = load_spec(run.path / RESOLVED_FILE)
    changes = diff_specs(old, spec)
    if not changes:
        return []
    compatible, reasons = resume_compatibility(old, spec)
    if not compatible:
        raise ResumeRefused(run.name, changes, reasons)
    return changes


def _reshard(spec: Spec, checkpoint: Path, ranks: Ranks | None) -> Move | None:
    """Make `checkpoint` loadable by this run's engine and layout; the move made, or None when it loads as
    saved. Raises RunInputError when the optimizer state cannot be kept."""
    from .reshard import DS_DIR, ReshardError, prepare_local_resume, prepare_resume

    try:
        if ranks is not None:
            move = prepare_resume(checkpoint, spec.parallel.zero.stage, ranks.world_size, spec=spec)
            return move if move.changes else None
        if not (checkpoint / DS_DIR).is_dir():
            return None  # a local checkpoint: the local engine reads it as it is
        import os

        import torch

        if not torch.cuda.is_available():  # DeepSpeed, imported to read its files, warns it found no GPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return prepare_local_resume(checkpoint)
    except (ReshardError, OSError) as error:
        raise RunInputError(f"cannot resume from {checkpoint}: {error}") from None


# ---------------------------------------------------------------- the run folder


def open_run(spec: Spec, options: RunOptions, *, data: PreparedData, spec_hash: str, resume: Resume | None) -> RunDir:
    """Create the run folder (fresh run) or record this resume in the resumed run's manifest. Raises
    RunInputError when a new run's folder is not empty."""
    from tabula.schemas.canonical import canonical_yaml

    from .rundir import RESOLVED_FILE, build_manifest, create_run_dir, new_run_path

    command = list(options.command if options.command is not None else sys.argv)
    if resume is not None:
        run = resume.run
        manifest = run.read_manifest()
        changes = [{"path": c.path, "kind": c.kind, "old": c.old, "new": c.new} for c in resume.changes]
        manifest["resumes"].append({"time": time.time(), "command": command, "spec_hash": spec_hash, "changes": changes})
        if changes:
            (run.path / RESOLVED_FILE).write_text(canonical_yaml(spec), encoding="utf-8")
            manifest["spec_hash"] = spec_hash
        run.write_manifest(manifest)
        _log_skipped(run, resume)
        return run
    path = Path(options.run_dir) if options.run_dir else new_run_path(spec.track.runs_dir, spec.name)
    source = spec.source_path
    spec_text = Path(source).read_text(encoding="utf-8") if source else canonical_yaml(spec)
    manifest = build_manifest(spec, spec_hash=spec_hash, prepared=data, command=command,
                              overrides=list(options.overrides), run_name=path.name)
    try:
        return create_run_dir(path, spec, spec_text=spec_text, resolved_yaml=canonical_yaml(spec), manifest=manifest,
                              tokenizer_json=data.tokenizer_json)
    except FileExistsError as error:
        raise RunInputError(str(error)) from None


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

    Raises RunInputError (ResumeRefused, LaunchError) for a run that cannot start as asked, DataError for
    bad data, SpecErrors for a spec the plan refuses. Creates (or records the resume in) the run folder
    last, so a refused run leaves nothing behind."""
    from tabula.compiler import make_plan
    from tabula.schemas.canonical import spec_hash as hash_of

    from .data import prepare
    from .data.cache import cache_root
    from .engine import pick_device

    ranks = None
    if wants_ranks(spec, options.nproc):
        from .launch import ranks_for

        ranks = ranks_for(spec, options.nproc)
    target = find_resume_target(spec, options)
    changes: Sequence[Change] = resume_changes(spec, target[0]) if target is not None else ()
    data = prepare(spec, cache_dir=options.cache_dir, progress=progress)
    if target is not None:
        run = target[0]
        recorded = run.read_manifest().get("data", {}).get("tokenizer_hash")
        if recorded and recorded != data.tokenizer_hash:
            raise RunInputError(f"the tokenizer differs from the one {run.name} was trained with (hash {recorded[:12]}, now "
                                f"{data.tokenizer_hash[:12]}): token ids would change meaning. Start a new run instead.")
    device_type = pick_device().type
    plan = make_plan(spec, world_size=ranks.world_size if ranks else None, vocab_size=data.vocab_size,
                     device_type=device_type, compile_cache=cache_root(options.cache_dir), max_steps=options.max_steps)
    if plan.total_steps == 0:
        raise RunInputError(f"the budget ({plan.budget_tokens} tokens) is smaller than one batch ({plan.batch_tokens} "
                            f"tokens): nothing to train")
    if ranks is not None:
        from .launch import check_deepspeed_config

        check_deepspeed_config(spec, plan)
    resume = None
    if target is not None:
        from .checkpoint import remove_leftovers

        run, selection = target
        assert selection.checkpoint is not None  # find_resume refuses a run with no intact checkpoint
        remove_leftovers(run.path)  # before anything is written: a full disk's space comes back first
        resume = Resume(run, selection.checkpoint, tuple(changes), _reshard(spec, selection.checkpoint, ranks),
                        skipped=selection.skipped)
    spec_hash = hash_of(spec)
    run_dir = open_run(spec, options, data=data, spec_hash=spec_hash, resume=resume)
    return PreparedRun(spec=spec, options=options, plan=plan, data=data, spec_hash=spec_hash, run=run_dir,
                       device_type=device_type, ranks=ranks, resume=resume)


# ---------------------------------------------------------------- training


def run_local(ready: PreparedRun, *, console: Console | None = None) -> Outcome:
    """Train a prepared local run in this process; `console` receives rank 0's events (progress lines).
    Returns how the run ended; a run that fails is an Outcome with reason `failed`, not an error."""
    from .build import build_local_engine
    from .engine import pick_device
    from .loop import train

    engine = build_local_engine(ready.spec, ready.plan, pick_device())
    return train(ready.spec, ready.plan, engine, ready.run, ready.data, spec_hash=ready.spec_hash,
                 max_steps=ready.options.max_steps, resume_from=ready.checkpoint, console=console,
                 parameters=sum(p.numel() for p in engine.model.parameters()))


def run_prepared(ready: PreparedRun, *, console: Console | None = None, out: TextIO | None = None) -> Outcome:
    """Train a prepared run: in this process (`console` gets the events), or on its DeepSpeed ranks, whose
    progress lines (rank 0's console) and the launcher's own lines go to `out` (default stdout)."""
    if ready.ranks is None:
        return run_local(ready, console=console)
    from .launch import launch

    return launch(ready, out=out or sys.stdout)

