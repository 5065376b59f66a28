"""The fsdp backend on 2 CPU ranks (gloo) against the local engine, on the same global batch and machine:
FSDP2 (2 data-parallel ranks), tensor parallelism (2 tensor ranks), DeepSpeed ZeRO-2 for reference, and a
2-stage DeepSpeed pipeline (8 micro-batches of 4 sequences), whose bubble is measured against the plan's figure
(stages-1)/(micro_batches+stages-1): measured = 1 - (one rank's share of the local step time / stages) / pipeline
step time, at the same micro-batch (it counts the stages' communication and imbalance with the idle time).

Each is `tabula run` of the same small quickstart variant (d_model 128, 2 layers, 4k tokens a step),
measured from its own train events (step_time, first interval left out as warm-up), so start-up
(imports, launchers) is not counted. The ranks share the machine's cores (cores / 2 threads each); the
local run is measured with all cores and with one rank's share. Prints steps/s and the ratios.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deepspeed import SPEC, steps_per_s  # noqa: E402 - the same spec and measurement


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as folder:
        work = Path(folder)
        (work / "bench.yaml").write_text(SPEC)
        os.environ.setdefault("TABULA_CACHE_DIR", str(work / "cache"))
        cores = os.cpu_count() or 1
        share = max(1, cores // 2)
        runs = {
            "local engine, all cores": steps_per_s(work, "local"),
            f"local engine, {share} thread(s)": steps_per_s(work, "local-1", threads=share),
            "FSDP2, 2 ranks": steps_per_s(work, "fsdp", "parallel.backend=fsdp", "--nproc", "2"),
            "tensor parallel 2, 2 ranks": steps_per_s(work, "tp", "parallel.backend=fsdp", "parallel.world_size=2",
                                                      "parallel.tensor.size=2"),
            "DeepSpeed ZeRO-2, 2 ranks": steps_per_s(work, "zero2", "parallel.backend=deepspeed", "parallel.zero.stage=2",
                                                     "--nproc", "2"),
            "local engine, micro-batch 4, share": steps_per_s(work, "local-mb4", "train.micro_batch=4", threads=share),
            "pipeline 2 stages x 8 micro-batches": steps_per_s(
                work, "pipeline", "train.micro_batch=4", "parallel.backend=deepspeed", "parallel.world_size=2",
                "parallel.pipeline.stages=2", "parallel.pipeline.micro_batches=8"),
        }
    stages, micro = 2, 8
    ideal = runs["local engine, micro-batch 4, share"] * stages  # steps/s were each stage never idle
    measured = 1 - runs["pipeline 2 stages x 8 micro-batches"] / ideal
    print(f"   pipeline bubble: measured {measured:.1%}, planned {(stages - 1) / (micro + stages - 1):.1%}")
    local, local_one = runs["local engine, all cores"], runs[f"local engine, {share} thread(s)"]
    for name, rate in runs.items():
        print(f"   {name:<34} {rate:6.2f} steps/s   x{rate / local:.2f} of local (all cores), "
              f"x{rate / local_one:.2f} of one rank's share")


if __name__ == "__main__":
    main()
