"""One rank of a DeepSpeed run, as the DeepSpeed launcher starts it (runtime/launch.py builds the command):

    python -m tabula.runtime.rank --spec SPEC --run-dir DIR [--override a.b=v ...] [--resume CKPT] [--max-steps N]

Every rank loads the same spec, plan, prepared data (from the token cache the launching process
filled) and model, wraps it in the DeepSpeed engine and runs the train loop; rank 0 alone writes
events, Aim and progress lines. A rank that fails leaves its error in `ranks/rank-N.error` in the
run folder before it exits, so the others (and the launching process) can say which rank failed
and why.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

RANKS_DIR = "ranks"


def error_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANKS_DIR / f"rank-{rank}.error"


def write_error(run_dir: Path, rank: int, text: str) -> None:
    path = error_file(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)  # whole or absent: a reader never sees half a message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tabula.runtime.rank", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the spec file")
    parser.add_argument("--run-dir", required=True, help="the run folder (created by the launching process)")
    parser.add_argument("--override", action="append", default=[], help="a.b.c=value, as on the tabula command line")
    parser.add_argument("--resume", default=None, help="a checkpoint folder to continue from")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # older launchers pass it
    return parser.parse_args(argv)


def build_engine(spec, plan):
    """The model on this rank's device, tabula's optimizer and the DeepSpeed engine over them."""
    from tabula.compiler import apply_activation_checkpointing, build_model
    from tabula.compiler.deepspeed_config import deepspeed_config

    from .deepspeed_engine import DeepSpeedEngine, rank_device
    from .optimizers import build_optimizer

    device = rank_device()
    model = build_model(spec, vocab_size=plan.vocab_size)
    model.materialize(device, spec.seed)  # the same seed on every rank: identical initial weights
    apply_activation_checkpointing(model, spec.parallel.activation_checkpointing, spec.parallel.checkpoint_every_n)
    optimizer = build_optimizer(spec.train.optimizer, model, device)
    config = deepspeed_config(spec, plan)
    parameters = sum(p.numel() for p in model.parameters())
    engine = DeepSpeedEngine(model, optimizer, config, device=device, precision=plan.precision)
    return engine, parameters


def run_rank(args: argparse.Namespace) -> int:
    """Train on this rank; returns the exit status (0 finished or stopped, 3 failed)."""
    import torch

    from tabula.compiler import make_plan
    from tabula.schemas.canonical import spec_hash
    from tabula.schemas.loader import load_spec

    from .console import Console
    from .data import prepare
    from .deepspeed_engine import init_distributed
    from .loop import train
    from .rundir import RunDir

    run_dir = Path(args.run_dir)
    init_distributed()
    import deepspeed.comm as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        if not torch.cuda.is_available():
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        # the launching process loaded this spec already, with the user's --allow-extends-outside
        spec = load_spec(args.spec, overrides=args.override, allow_extends_outside=True)
        prepared = prepare(spec)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size, device_type=device_type)
        engine, parameters = build_engine(spec, plan)
        engine.errors_dir = run_dir / RANKS_DIR
        outcome = train(spec, plan, engine, RunDir(run_dir), prepared, spec_hash=spec_hash(spec),
                        max_steps=args.max_steps, resume_from=Path(args.resume) if args.resume else None,
                        console=Console() if rank == 0 else None, parameters=parameters)
    except BaseException as error:  # noqa: BLE001 - whatever ends this rank must be reported, then end it
        write_error(run_dir, rank, f"rank {rank}: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        return 3
    if outcome.reason == "failed":
        if rank != 0:  # rank 0 wrote its error into the end event; the others leave it for the launcher
            write_error(run_dir, rank, f"rank {rank}: {outcome.error}")
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = run_rank(args)
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: DeepSpeed's and gloo's atexit hooks can block when a peer is gone
    os._exit(status)


if __name__ == "__main__":
    main()
