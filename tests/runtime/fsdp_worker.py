"""Run by torchrun from tests/runtime/test_fsdp.py: every fsdp run of the tiny spec in one launch (a
launch costs tens of seconds on a small CPU machine).

    python -m torch.distributed.run --nproc_per_node N fsdp_worker.py WORK MODE

MODE two (2 ranks): f2: 5 steps, a checkpoint, a resume for 5 more; f2-straight: 10 steps at once (the
resume must be bit-identical to it); local-to-f2: the local reference run's step-8 checkpoint resumed
for 5 steps; t2: 5 steps with tensor parallelism over both ranks, then its resume from f2's step 10
(DCP reshards data-parallel shards into tensor-parallel ones) for 3 steps (t2-from-f2).
MODE one (1 rank): f2's step-10 checkpoint resumed for 5 steps (f2-to-1r). The test reads the events.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: Path, mode: str) -> None:
    import torch.distributed as dist

    from tabula.compiler import make_plan
    from tabula.runtime.build import build_fsdp_engine
    from tabula.runtime.data import prepare
    from tabula.runtime.loop import train
    from tabula.runtime.parallel.mesh import init_process_group
    from tabula.runtime.rundir import RunDir, create_run_dir
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    rank, world = init_process_group(timeout_minutes=2)

    def run(name: str, *, tensor: int = 1, resume_from: Path | None = None, steps: int = 5, fresh: bool = True) -> RunDir:
        spec = load_spec(work / "tiny.yaml", overrides=["parallel.backend=fsdp", f"parallel.world_size={world}",
                                                        f"parallel.tensor.size={tensor}"])
        prepared = prepare(spec)
        plan = make_plan(spec, world_size=world // tensor, vocab_size=prepared.vocab_size)
        path = work / name
        if rank == 0 and fresh:
            create_run_dir(path, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                           tokenizer_json=None)
        dist.barrier()
        engine, parameters = build_fsdp_engine(spec, plan)
        outcome = train(spec, plan, engine, RunDir(path), prepared, spec_hash=spec_hash(spec), max_steps=steps,
                        resume_from=resume_from, parameters=parameters)
        assert outcome.reason == "stopped", outcome
        return RunDir(path)

    step10 = work / "f2" / "checkpoints" / "step-000010"
    if mode == "two":
        first = run("f2")
        run("f2", resume_from=first.checkpoints / "step-000005", fresh=False)
        run("f2-straight", steps=10)
        run("local-to-f2", resume_from=work / "local" / "checkpoints" / "step-000008")
        run("t2", tensor=2)
        run("t2-from-f2", tensor=2, resume_from=step10, steps=3)
    else:
        run("f2-to-1r", resume_from=step10)
    if rank == 0:
        (work / f"{mode}.done").write_text(json.dumps({"world_size": world}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
