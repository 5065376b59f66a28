"""Run by DeepSpeed's launcher from tests/runtime/test_deepspeed.py: many DeepSpeed runs of the tiny spec in
one launch (DeepSpeed's start-up costs tens of seconds a launch on a small CPU machine).

    python -m deepspeed.launcher.launch ... deepspeed_worker.py WORK MODE

MODE stages (2 ranks): for ZeRO 0-3, 5 steps, a checkpoint, a resume for 5 more (run folders z0..z3);
then the 2-rank moves of the ZeRO-2 checkpoint at step 10 into ZeRO-1 and ZeRO-3 (z2-to-z1, z2-to-z3),
and the local engine's step-8 checkpoint (the test's reference run) into 2 ranks of ZeRO-2 (local-to-z2).
MODE moe (2 ranks): a mixture-of-experts model 3 steps under each ZeRO stage (moe-z0..moe-z3).
MODE one-rank (1 rank): the step-10 checkpoints of z0..z3 resumed on 1 rank at the same stage, and z2's
into ZeRO-1 (z0-to-1r ... z2-to-1r-z1). Every resumed run trains 5 steps; the test reads the events.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


MOE = ("model.block.mlp={kind: moe, n_experts: 4, top_k: 2, hidden: 32, n_shared: 1, router: sigmoid, balance: bias, "
       "bias_rate: 0.01, z_loss_weight: 0.001}")


def main(work: Path, mode: str) -> None:
    import deepspeed.comm as dist

    from tabula.compiler import make_plan
    from tabula.runtime.data import prepare
    from tabula.runtime.deepspeed_engine import init_distributed
    from tabula.runtime.loop import train
    from tabula.runtime.build import build_deepspeed_engine
    from tabula.runtime.reshard import prepare_resume
    from tabula.runtime.rundir import RunDir, create_run_dir
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    init_distributed(timeout_minutes=2)
    rank, world = dist.get_rank(), dist.get_world_size()

    def run(name: str, stage: int, *, resume_from: Path | None = None, steps: int = 5, fresh: bool = True,
            model: tuple[str, ...] = ()) -> RunDir:
        spec = load_spec(work / "tiny.yaml", overrides=["parallel.backend=deepspeed", f"parallel.zero.stage={stage}", *model])
        prepared = prepare(spec)
        plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size)
        path = work / name
        if rank == 0:
            if fresh:
                create_run_dir(path, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                               tokenizer_json=None)
            if resume_from is not None:
                prepare_resume(resume_from, stage, world, spec=spec)
        dist.barrier()
        engine, parameters = build_deepspeed_engine(spec, plan)
        outcome = train(spec, plan, engine, RunDir(path), prepared, spec_hash=spec_hash(spec), max_steps=steps,
                        resume_from=resume_from, parameters=parameters)
        assert outcome.reason == "stopped", outcome
        return RunDir(path)

    def step10(name: str) -> Path:
        return work / name / "checkpoints" / "step-000010"

    if mode == "stages":
        for stage in (0, 1, 2, 3):
            first = run(f"z{stage}", stage)
            run(f"z{stage}", stage, resume_from=first.checkpoints / "step-000005", fresh=False)
        run("z2-to-z1", 1, resume_from=step10("z2"))
        run("z2-to-z3", 3, resume_from=step10("z2"))
        run("local-to-z2", 2, resume_from=work / "local" / "checkpoints" / "step-000008")
    elif mode == "moe":  # a mixture of experts (DeepSeek-V3's bias balancing, a shared expert) under each stage
        for stage in (0, 1, 2, 3):
            run(f"moe-z{stage}", stage, steps=3, model=(MOE,))
    else:
        for stage in (0, 1, 2, 3):
            run(f"z{stage}-to-1r", stage, resume_from=step10(f"z{stage}"))
        run("z2-to-1r-z1", 1, resume_from=step10("z2"))
    if rank == 0:
        (work / f"{mode}.done").write_text(json.dumps({"world_size": world}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
