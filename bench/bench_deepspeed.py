"""DeepSpeed ZeRO-2 on 2 CPU ranks against the local engine, on the same global batch and machine.

The runs are `tabula run` of the same small quickstart variant (d_model 128, 2 layers, 4k tokens a
step), measured from their own train events (step_time, first interval left out as warm-up), so
start-up (imports, DeepSpeed's launcher, C++ op loading) is not counted. The ranks share the machine's
cores (each gets cores / 2 threads); the local run uses them all, and once more one thread (what each
rank has), which separates the data-parallel scaling from how well one process uses its threads on
a busy machine. Prints steps/s and the ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABULA = Path(sys.executable).with_name("tabula")
STEPS = 12
LOG_EVERY = 3

SPEC = f"""\
extends: {ROOT / "specs" / "quickstart.yaml"}
name: bench-deepspeed
model:
  d_model: 128
  n_layers: 2
  block: {{mlp: {{kind: swiglu, hidden: 352}}}}
data:
  tokenizer: {{kind: bpe, vocab_size: 4096, max_chars: 1M}}
  sources:
    stdlib: {{kind: python_stdlib, max_files: 150}}
  curriculum:
    - {{seq_len: 128, mix: {{stdlib: 1.0}}}}
train:
  batch_tokens: 4k
  budget: {{tokens: 1M}}
  eval: null
  checkpoint: {{every_tokens: null, keep_last: 1}}
  log: {{every_steps: {LOG_EVERY}}}
track:
  aim: {{enabled: false}}
"""


def steps_per_s(work: Path, name: str, *extra: str, threads: int | None = None) -> float:
    """Mean steps/s of a run's train events after the first interval."""
    command = [str(TABULA), "run", "bench.yaml", *extra, "--headless", "--max-steps", str(STEPS), "--run-dir", name]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: exit {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    events = [json.loads(line) for line in (work / name / "events.jsonl").read_text().splitlines()]
    times = [e["step_time"] for e in events if e["kind"] == "train"][1:]
    return 1.0 / (sum(times) / len(times))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-deepspeed-") as folder:
        work = Path(folder)
        (work / "bench.yaml").write_text(SPEC)
        os.environ.setdefault("TABULA_CACHE_DIR", str(work / "cache"))
        cores = os.cpu_count() or 1
        local = steps_per_s(work, "local")
        local_one = steps_per_s(work, "local-1", threads=max(1, cores // 2))
        zero2 = steps_per_s(work, "zero2", "parallel.backend=deepspeed", "parallel.zero.stage=2", "--nproc", "2")
    print(f"   local engine, 1 process x {cores} threads:           {local:.2f} steps/s  (4k tokens a step)")
    print(f"   local engine, 1 process x {max(1, cores // 2)} thread(s):          {local_one:.2f} steps/s")
    print(f"   DeepSpeed ZeRO-2, 2 ranks (gloo) x {max(1, cores // 2)} thread(s): {zero2:.2f} steps/s")
    print(f"   ratio DeepSpeed ZeRO-2 / local (all cores):   {zero2 / local:.2f}x")
    print(f"   ratio DeepSpeed ZeRO-2 / local (one rank's):  {zero2 / local_one:.2f}x  (2.00x would be perfect scaling)")


if __name__ == "__main__":
    main()
