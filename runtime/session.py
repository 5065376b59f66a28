"""One local `tabula run`, from the spec to the exit code: resume checks, data, plan, model, engine,
run folder, then the loop. The DeepSpeed launcher reuses the pieces (`open_run`, `resume_target`).

Errors in the user's input (spec, flags, paths, data) are printed as one clear message and give exit
code 2; a run that fails gives 3; SIGINT/SIGTERM give 130/143 after the checkpoint.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BAD_INPUT, EXIT_RUN_FAILED = 0, 2, 3


def _error(message: str) -> None:
    sys.stderr.write(f"tabula run: {message}\n")
    sys.stderr.flush()


def load_run_spec(path: str, overrides: list[str], *, allow_extends_outside: bool = False):
    """The spec, or None after printing its errors."""
    from tabula.report import load_spec_or_report

    return load_spec_or_report(path, overrides, allow_extends_outside=allow_extends_outside)


# ---------------------------------------------------------------- resume


def resume_target(args, spec):
    """(RunDir, checkpoint) for --resume, or None after printing why not. None, None without --resume."""
    from .rundir import find_resume

    if not args.resume:
        return None, None
    if args.run_dir:
        _error("--run-dir and --resume exclude each other: a resumed run continues in its own folder")
        return None
    try:
        return find_resume(args.resume, spec)
    except FileNotFoundError as error:
        _error(str(error))
        return None


def resolve_resume(args, spec):
    """--resume -> (run or None, checkpoint or None, applied spec changes), or None after
    printing why the resume is refused (bad target, incompatible spec change)."""
    target = resume_target(args, spec)
    if target is None:
        return None
    resume_run, checkpoint = target
    changes: list[dict[str, Any]] = []
    if resume_run is not None:
        allowed, changes = resume_changes(spec, resume_run)
        if not allowed:
            return None
    return resume_run, checkpoint, changes


def resume_changes(spec, run) -> tuple[bool, list[dict[str, Any]]]:
    """Compare `spec` with the run's resolved spec. Prints the changes; returns (allowed, changes as
    JSON-able dicts). Incompatible changes are printed with the reason and refused."""
    from tabula.compiler.impact import resume_compatibility
    from tabula.schemas.diff import diff_specs
    from tabula.schemas.loader import load_spec

    from .rundir import RESOLVED_FILE

    old = load_spec(run.path / RESOLVED_FILE)
    changes = diff_specs(old, spec)
    if not changes:
        return True, []
    print(f"The spec differs from the one {run.name} was trained with:")
    for change in changes:
        print(f"  {change.line()}")
    compatible, reasons = resume_compatibility(old, spec)
    if not compatible:
        _error("cannot resume with these changes:\n" + "\n".join(f"  {reason}" for reason in reasons)
               + "\nStart a new run instead (without --resume).")
        return False, []
    print("These changes are compatible with the checkpoint: applying them.")
    return True, [{"path": c.path, "kind": c.kind, "old": c.old, "new": c.new} for c in changes]


def prepare_local_checkpoint(checkpoint) -> bool:
    """Before a local run resumes `checkpoint`: a DeepSpeed one (any ZeRO stage, any world size) gets the
    optimizer.pt the local engine reads, written from its universal form (runtime/reshard.py); the move is
    shown. Returns False after printing why the state cannot be kept; True otherwise (nothing to do for a
    local checkpoint)."""
    from .reshard import DS_DIR, ReshardError, prepare_local_resume

    if checkpoint is None or not (Path(checkpoint) / DS_DIR).is_dir():
        return True
    import os

    import torch

    if not torch.cuda.is_available():  # DeepSpeed, imported to read its files, warns it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        move = prepare_local_resume(Path(checkpoint))
    except (ReshardError, OSError) as error:
        _error(f"cannot resume from {checkpoint}: {error}")
        return False
    print(f"resuming {move.text}: weights and optimizer state kept", flush=True)
    return True


# ---------------------------------------------------------------- the run folder


def open_run(args, spec, *, prepared, spec_hash: str, resume_run, changes: list[dict]):
    """Create the run folder (fresh run) or record this resume in it. Returns the RunDir."""
    import time

    from tabula.schemas.canonical import canonical_yaml

    from .rundir import RESOLVED_FILE, build_manifest, create_run_dir, new_run_path

    command = ["tabula", "run", *sys.argv[2:]] if len(sys.argv) > 1 and sys.argv[1] == "run" else list(sys.argv)
    if resume_run is not None:
        manifest = resume_run.read_manifest()
        manifest["resumes"].append({"time": time.time(), "command": command, "spec_hash": spec_hash, "changes": changes})
        if changes:
            (resume_run.path / RESOLVED_FILE).write_text(canonical_yaml(spec), encoding="utf-8")
            manifest["spec_hash"] = spec_hash
        resume_run.write_manifest(manifest)
        return resume_run
    path = Path(args.run_dir) if args.run_dir else new_run_path(spec.track.runs_dir, spec.name)
    source = getattr(spec, "source_path", None)
    spec_text = Path(source).read_text(encoding="utf-8") if source else canonical_yaml(spec)
    run_name = path.name
    manifest = build_manifest(spec, spec_hash=spec_hash, prepared=prepared, command=command,
                              overrides=list(args.overrides), run_name=run_name)
    return create_run_dir(path, spec, spec_text=spec_text, resolved_yaml=canonical_yaml(spec), manifest=manifest,
                          tokenizer_json=prepared.tokenizer_json)


def child_command(args, spec) -> tuple[list[str] | None, Path | None]:
    """The headless command the dashboard runs beside itself, and the run folder it will write."""
    from .rundir import new_run_path

    argv = [sys.executable, "-m", "tabula.cli", "run", args.spec, *args.overrides, "--headless"]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    if args.nproc:  # the child launches the DeepSpeed ranks itself
        argv += ["--nproc", str(args.nproc)]
    if getattr(args, "allow_extends_outside", False):
        argv += ["--allow-extends-outside"]
    if args.resume:
        target = resume_target(args, spec)
        if target is None:
            return None, None
        run, _ = target
        return argv + ["--resume", str(run.path)], run.path
    run_dir = Path(args.run_dir) if args.run_dir else new_run_path(spec.track.runs_dir, spec.name)
    return argv + ["--run-dir", str(run_dir)], run_dir


# ---------------------------------------------------------------- the local run


def build_local_engine(spec, plan, device):
    """Model (materialized, checkpointing and compile policies applied), optimizer, LocalEngine."""
    from tabula.compiler import apply_activation_checkpointing, apply_compile, build_model

    from .engine import LocalEngine
    from .optimizers import build_optimizer

    model = build_model(spec, vocab_size=plan.vocab_size)
    model.materialize(device, spec.seed)
    parallel = spec.parallel
    if parallel.activation_checkpointing != "none":
        apply_activation_checkpointing(model, parallel.activation_checkpointing, parallel.checkpoint_every_n)
    apply_compile(model, spec.model.compile, device.type)
    optimizer = build_optimizer(spec.train.optimizer, model, device)
    return LocalEngine(model, optimizer, device=device, precision=plan.precision, grad_clip=spec.train.grad_clip)


def prepare_data(spec, cache_dir):
    """PreparedData, or None after printing the data error."""
    from .data import prepare
    from .data.errors import DataError
    from .data.progress import terminal_progress

    try:
        return prepare(spec, cache_dir=cache_dir, progress=terminal_progress())
    except DataError as error:
        _error(str(error))
        return None


def run_local(args, spec) -> int:
    """`tabula run` on one process. Returns the exit code."""
    from tabula.compiler import make_plan
    from tabula.report import print_errors
    from tabula.schemas.canonical import spec_hash as hash_of
    from tabula.schemas.errors import SpecErrors

    from .console import Console
    from .engine import pick_device
    from .loop import train

    resume = resolve_resume(args, spec)
    if resume is None:
        return EXIT_BAD_INPUT
    resume_run, checkpoint, changes = resume
    if not prepare_local_checkpoint(checkpoint):
        return EXIT_BAD_INPUT
    prepared = prepare_data(spec, args.cache_dir)
    if prepared is None:
        return EXIT_BAD_INPUT
    if resume_run is not None:
        recorded = resume_run.read_manifest().get("data", {}).get("tokenizer_hash")
        if recorded and recorded != prepared.tokenizer_hash:
            _error(f"the tokenizer differs from the one {resume_run.name} was trained with (hash {recorded[:12]}, now "
                   f"{prepared.tokenizer_hash[:12]}): token ids would change meaning. Start a new run instead.")
            return EXIT_BAD_INPUT
    device = pick_device()
    try:
        plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type=device.type)
    except SpecErrors as errors:
        print_errors(errors.errors)
        return EXIT_BAD_INPUT
    if plan.total_steps == 0:
        _error(f"the budget ({plan.budget_tokens} tokens) is smaller than one batch ({plan.batch_tokens} tokens): nothing to train")
        return EXIT_BAD_INPUT
    spec_hash = hash_of(spec)
    try:
        run = open_run(args, spec, prepared=prepared, spec_hash=spec_hash, resume_run=resume_run, changes=changes)
    except FileExistsError as error:
        _error(str(error))
        return EXIT_BAD_INPUT
    engine = build_local_engine(spec, plan, device)
    for note in plan.notes:
        print(f"note: {note}")
    print(f"run folder: {run.path}", flush=True)
    outcome = train(spec, plan, engine, run, prepared, spec_hash=spec_hash, max_steps=args.max_steps,
                    resume_from=checkpoint, console=Console(), parameters=sum(p.numel() for p in engine.model.parameters()))
    resume_hint = f"tabula run {shlex.quote(args.spec)} --resume {shlex.quote(str(run.path))}"
    if outcome.reason == "failed":
        if outcome.checkpoint is not None:
            print(f"the last good checkpoint is {outcome.checkpoint}; after fixing the cause: {resume_hint}")
        return EXIT_RUN_FAILED
    if outcome.reason == "stopped":
        if outcome.checkpoint is not None:
            print(f"stopped with a checkpoint; continue with: {resume_hint}")
        if outcome.signal:
            return 128 + int(getattr(signal, outcome.signal))
    return EXIT_OK
