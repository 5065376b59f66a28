"""Run by DeepSpeed's launcher from tests/runtime/test_pipeline.py (one 2-rank launch: DeepSpeed's start-up
costs tens of seconds here): a 2-stage pipeline trains 4 steps with a checkpoint, then resumes from it for
4 more in a new engine (run folder pp).

    python -m deepspeed.launcher.launch ... pipeline_worker.py WORK
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: Path) -> None:
    import deepspeed.comm as dist

    from tabula.compiler import make_plan
    from tabula.runtime.build import build_deepspeed_engine
    from tabula.runtime.data import prepare
    from tabula.runtime.deepspeed_engine import init_distributed
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import RunDir, create_run_dir
    from tabula.schemas.canonical import canonical_yaml, spec_hash
    from tabula.schemas.loader import load_spec

    init_distributed(timeout_minutes=2)
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = load_spec(work / "tiny.yaml", overrides=["parallel.backend=deepspeed", f"parallel.world_size={world}",
                                                    "parallel.pipeline.stages=2", "parallel.pipeline.micro_batches=2"])
    prepared = prepare(spec)
    plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size)
    path = work / "pp"
    if rank == 0:
        create_run_dir(path, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                       tokenizer_json=None)
    dist.barrier()
    for resume in (None, path / "checkpoints" / "step-000004"):
        engine, parameters = build_deepspeed_engine(spec, plan)
        outcome = train(spec, plan, engine, RunDir(path), prepared, spec_hash=spec_hash(spec), max_steps=4,
                        resume_from=resume, parameters=parameters)
        assert outcome.reason == "stopped", outcome
        (work / f"stage-{engine.stage_id}.json").write_text(json.dumps({"owned": engine.owned_names}))
    if rank == 0:
        (work / "pipeline.done").write_text(json.dumps({"world_size": world}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
