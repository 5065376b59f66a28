"""Run by DeepSpeed's launcher from tests/runtime/test_deepspeed_finetune.py: fine-tuning runs of the tiny spec
on 2 ranks in one launch (DeepSpeed's start-up costs tens of seconds a launch on a small CPU machine).

    python -m deepspeed.launcher.launch ... adapters_worker.py WORK [NAME ...]

For each (name, ZeRO stage, train.finetune override) in RUNS: 5 steps, a checkpoint, a resume for 5 more in a
new engine (run folder WORK/<name>; NAMEs: only those runs); the test compares the losses with the local engine's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = [
    ("lora-z2", 2, "{kind: lora, rank: 4, targets: [attn.*, mlp.*]}"),
    ("lora-z3", 3, "{kind: lora, rank: 4, targets: [attn.*, mlp.*]}"),
    ("prefix-z2", 2, "{kind: prefix_tuning, virtual_tokens: 4}"),
    ("dora-z3", 3, "{kind: dora, rank: 4, targets: [attn.*, mlp.*]}"),
]


def main(work: Path, names: list[str]) -> None:
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
    for name, stage, finetune in RUNS:
        if names and name not in names:
            continue
        spec = load_spec(work / "tiny.yaml", overrides=["parallel.backend=deepspeed", f"parallel.zero.stage={stage}",
                                                        f"train.finetune={finetune}", "model.max_seq_len=72"])
        prepared = prepare(spec)
        plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size)
        path = work / name
        resume_from = None
        for _ in range(2):
            if rank == 0 and resume_from is None:
                create_run_dir(path, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                               tokenizer_json=None)
            dist.barrier()
            engine, parameters = build_deepspeed_engine(spec, plan)
            outcome = train(spec, plan, engine, RunDir(path), prepared, spec_hash=spec_hash(spec), max_steps=5,
                            resume_from=resume_from, parameters=parameters)
            assert outcome.reason == "stopped", outcome
            resume_from = outcome.checkpoint
    if rank == 0:
        (work / "adapters.done").write_text(json.dumps({"world_size": world}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
