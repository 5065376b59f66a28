"""One rank of a DeepSpeed or fsdp run, as the DeepSpeed launcher or torchrun starts it (runtime/launch.py
builds the command):

    python -m tabula.runtime.rank --spec SPEC --run-dir DIR [--backend deepspeed|fsdp] [--override a.b=v ...]
                                  [--resume CKPT] [--max-steps N]

Every rank loads the same spec, plan, prepared data (from the token cache the launching process
filled) and model (runtime/build.py, as the local engine's), wraps it in the DeepSpeed or FSDP2 engine and
runs the train loop; rank 0 alone writes events, Aim and progress lines. A rank that fails leaves its
error in `ranks/rank-N.error` in the run folder before it exits, so the others (and the launching
process) can say which rank failed and why. The process exits with 0 when the run finished or
stopped, 1 when it failed: the launcher reads the run's outcome from the run folder, not from it.

The arguments are a small protocol between launch.py (`rank_argv`) and this module
(`parse_rank_argv`), not a command for people.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .loop import Outcome

from tabula.schemas.rundir_protocol import RANKS_DIR


@dataclass(frozen=True)
class RankOptions:
    """What every rank of a run is told: the spec and its overrides, the run folder (created by the
    launching process), the checkpoint to resume from and the steps to run."""

    spec_path: str
    run_dir: Path
    overrides: tuple[str, ...] = ()
    resume_from: Path | None = None
    max_steps: int | None = None
    backend: str = "deepspeed"  # "deepspeed" | "fsdp"


def rank_argv(options: RankOptions) -> list[str]:
    """The arguments after `python -m tabula.runtime.rank` (read back by parse_rank_argv)."""
    argv = ["--spec", options.spec_path, "--run-dir", str(options.run_dir)]
    if options.backend != "deepspeed":
        argv += ["--backend", options.backend]
    for override in options.overrides:
        argv += ["--override", override]
    if options.resume_from is not None:
        argv += ["--resume", str(options.resume_from)]
    if options.max_steps is not None:
        argv += ["--max-steps", str(options.max_steps)]
    return argv


def parse_rank_argv(argv: Sequence[str]) -> RankOptions:
    """The RankOptions `rank_argv` wrote (`--flag value` or `--flag=value`; an older launcher's
    `--local_rank` is ignored). Raises ValueError for anything else."""
    values: dict[str, list[str]] = {}
    items = list(argv)
    while items:
        item = items.pop(0)
        flag, equals, value = item.partition("=")
        if flag not in ("--spec", "--run-dir", "--override", "--resume", "--max-steps", "--local_rank", "--backend"):
            raise ValueError(f"unexpected rank argument {item!r}")
        if not equals:
            if not items:
                raise ValueError(f"rank argument {flag} has no value")
            value = items.pop(0)
        values.setdefault(flag, []).append(value)
    for required in ("--spec", "--run-dir"):
        if required not in values:
            raise ValueError(f"rank argument {required} is missing")
    resume = values.get("--resume", [None])[-1]
    max_steps = values.get("--max-steps", [None])[-1]
    return RankOptions(spec_path=values["--spec"][-1], run_dir=Path(values["--run-dir"][-1]),
                       overrides=tuple(values.get("--override", [])), resume_from=Path(resume) if resume else None,
                       max_steps=int(max_steps) if max_steps is not None else None,
                       backend=values.get("--backend", ["deepspeed"])[-1])


def error_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANKS_DIR / f"rank-{rank}.error"


def write_error(run_dir: Path, rank: int, text: str) -> None:
    path = error_file(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)  # whole or absent: a reader never sees half a message


def run_rank(options: RankOptions) -> Outcome:
    """Train on this rank (the process group is joined here). Whatever ends the rank with an error is left
    in its error file: an exception (then returned as a `failed` Outcome at step 0) or, on ranks other
    than 0, a failed outcome (rank 0 wrote its error into the end event)."""
    import torch

    from tabula.compiler import make_plan
    from tabula.schemas.canonical import spec_hash
    from tabula.schemas.loader import load_spec

    from .build import build_deepspeed_engine, build_fsdp_engine
    from .console import Console
    from .data import prepare
    from .data.cache import cache_root
    from .loop import Outcome, train
    from .rundir import RunDir

    run_dir = options.run_dir
    fsdp = options.backend == "fsdp"
    if fsdp:
        from .parallel.mesh import init_process_group

        rank, world = init_process_group()
    else:
        from .deepspeed_engine import init_distributed

        init_distributed()
        import deepspeed.comm as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    try:
        if not torch.cuda.is_available():
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        # the launching process loaded this spec already, with the user's --allow-extends-outside
        spec = load_spec(options.spec_path, overrides=list(options.overrides), allow_extends_outside=True)
        prepared = prepare(spec)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size, device_type=device_type,
                         compile_cache=cache_root(), max_steps=options.max_steps)
        if device_type == "cuda":  # the launcher checked the CPU's memory; each rank checks its own GPU
            from .deepspeed_engine import rank_device
            from .memory import check_memory

            check_memory(spec, plan, rank_device(), spec_path=options.spec_path)
        build = build_fsdp_engine if fsdp else build_deepspeed_engine
        engine, parameters = build(spec, plan, errors_dir=run_dir / RANKS_DIR)
        outcome = train(spec, plan, engine, RunDir(run_dir), prepared, spec_hash=spec_hash(spec),
                        max_steps=options.max_steps, resume_from=options.resume_from,
                        console=Console() if rank == 0 else None, parameters=parameters)
    except BaseException as error:  # noqa: BLE001 - whatever ends this rank must be reported, then end it
        write_error(run_dir, rank, f"rank {rank}: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        return Outcome("failed", 0, 0, error=f"rank {rank}: {type(error).__name__}: {error}")
    if outcome.reason == "failed" and rank != 0:
        write_error(run_dir, rank, f"rank {rank}: {outcome.error}")
    return outcome


def main(argv: Sequence[str] | None = None) -> NoReturn:
    outcome = run_rank(parse_rank_argv(sys.argv[1:] if argv is None else argv))
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: DeepSpeed's and gloo's atexit hooks can block when a peer is gone
    os._exit(1 if outcome.reason == "failed" else 0)


if __name__ == "__main__":
    main()
