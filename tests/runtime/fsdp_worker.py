"""Run by torchrun from tests/runtime/test_fsdp.py: every fsdp run of the tiny spec in one launch (a
launch costs tens of seconds on a small CPU machine).

    python -m torch.distributed.run --nproc_per_node N fsdp_worker.py WORK MODE

MODE two (2 ranks): f2: 10 steps (checkpoints at 8 and 10); f2-resumed: its step-8 checkpoint resumed
for 2 steps (bit-identical to f2's steps 9-10); local-to-f2: the local reference run's step-8 checkpoint
resumed for 2 steps; t2: 3 steps with tensor parallelism over both ranks; t2-from-f2: f2's step 10
resumed with tensor parallelism (DCP reshards data-parallel shards into tensor-parallel ones), 2 steps.
MODE one (1 rank, started without torchrun: RANK=0 WORLD_SIZE=1): f2's step 10 resumed for 3 steps
(f2-to-1r). The test reads the events, and each rank's measured bytes of weights and optimizer state
after f2 and t2 (memory-NAME-rankR.json) to hold against the plan, with an evaluation loss and a greedy
continuation of the final weights (held against the local model loaded from the run).
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

    def measure(name: str, engine) -> None:
        """This rank's bytes of weights (its shards) and optimizer state, as the plan counts them."""
        from torch.distributed.tensor import DTensor

        def local(t):
            return t.to_local() if isinstance(t, DTensor) else t

        weights = sum(local(p).numel() * local(p).element_size() for p in engine.model.parameters())
        state = sum(local(v).numel() * local(v).element_size() for s in engine.optimizer.state.values()
                    for k, v in s.items() if k != "step" and hasattr(v, "numel"))
        import torch

        ids = torch.arange(20, 36).view(1, 16)
        loss = float(engine.evaluate(ids, ids.roll(-1, dims=1), None))
        generated = engine.generate([5, 6, 7], 3)  # collective: every rank
        (work / f"memory-{name}-rank{rank}.json").write_text(json.dumps({
            "weights": weights, "optimizer_state": state, "eval_loss": loss, "generated": generated}))

    def run(name: str, *, tensor: int = 1, resume_from: Path | None = None, steps: int = 5, fresh: bool = True) -> RunDir:
        spec = load_spec(work / "tiny.yaml", overrides=["parallel.backend=fsdp", f"parallel.world_size={world}",
                                                        f"parallel.tensor.size={tensor}"])
        prepared = prepare(spec)
        plan = make_plan(spec, world_size=world, vocab_size=prepared.vocab_size)
        path = work / name
        if rank == 0 and fresh:
            create_run_dir(path, spec, spec_text="", resolved_yaml=canonical_yaml(spec), manifest={"resumes": []},
                           tokenizer_json=None)
        dist.barrier()
        engine, parameters = build_fsdp_engine(spec, plan)
        outcome = train(spec, plan, engine, RunDir(path), prepared, spec_hash=spec_hash(spec), max_steps=steps,
                        resume_from=resume_from, parameters=parameters)
        assert outcome.reason == "stopped", outcome
        if name in ("f2", "t2"):
            measure(name, engine)
        return RunDir(path)

    step10 = work / "f2" / "checkpoints" / "step-000010"
    if mode == "two":
        first = run("f2", steps=10)
        run("f2-resumed", resume_from=first.checkpoints / "step-000008", steps=2)
        run("local-to-f2", resume_from=work / "local" / "checkpoints" / "step-000008", steps=2)
        run("t2", tensor=2, steps=3)
        run("t2-from-f2", tensor=2, resume_from=step10, steps=2)
    else:
        run("f2-to-1r", resume_from=step10, steps=3)
    if rank == 0:
        (work / f"{mode}.done").write_text(json.dumps({"world_size": world}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
