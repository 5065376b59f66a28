"""What torch.compile costs and saves, and whether `enabled: auto` spends it well. Two parts:

table: for the quickstart and each preset, in fresh processes with an empty compile cache (cold) and
  again with the cache the first filled (warm): the training graphs' compile time (the first compiled
  step less a steady one), a stage change (the plan's next shape: with dynamic shapes it compiles
  nothing), the evaluation graphs' compile time, the steady-state step time compiled against eager
  (timed in alternation in one process), the break-even steps and the cache's size. Clock: the
  process's CPU time, compile workers and gcc included (TORCHINDUCTOR_COMPILE_THREADS=1), on one torch
  thread, which other processes on a shared machine barely move. Presets are timed on micro-batches
  of at most 16 sequences (the saving is a share of the step, the step's size matters little).
  compiler/compile_costs.py records these numbers.

runs: the quickstart's whole `tabula run --headless` (eval off, checkpoint at the end, so both sides
  do the same work), start to exit, against a plain nanoGPT-style loop (bench_model.PlainGPT, eager,
  AdamW, the same batches from tabula's sampler, the same shapes and steps): tabula eager, auto with a
  cold compile cache, auto warm, and compile forced on cold (what auto weighs); then a 20-step run,
  where auto must stay eager. Clock: wall time and the processes' CPU time.

    python bench/bench_compile.py                      (make bench: the quickstart's 384 steps)
    python bench/bench_compile.py --steps 96 --table quickstart
    BENCH_COMPILE_STEPS=96 make bench

A run of fewer steps than the quickstart's scales its curriculum: the first half of the steps at
seq_len 128, the rest at 256. Rows that take long print as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"quickstart": ROOT / "specs" / "quickstart.yaml", **{p.stem: p for p in sorted((ROOT / "specs" / "presets").glob("*.yaml"))}}
PAIRS = int(os.environ.get("BENCH_COMPILE_PAIRS", "4"))  # steady-state (compiled, eager) step pairs a shape
MAX_MICRO = 16
TABULA = [sys.executable, "-c", "import sys; from tabula.cli import main; sys.exit(main(sys.argv[1:]))"]


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---------------------------------------------------------------- table: one spec in this process


def measure(spec_path: Path) -> dict:
    """Compile costs and steady-state times of one spec's model (see the module docstring)."""
    import torch

    from tabula.compiler import apply_compile, build_model, make_plan
    from tabula.schemas.loader import load_spec
    from tabula.schemas.model import Compile

    torch.set_num_threads(1)
    spec = load_spec(spec_path, ["model.compile.enabled=true"])
    vocab = spec.vocab_size or 4096
    plan = make_plan(spec, vocab_size=vocab)
    shapes = list(dict.fromkeys((min(s.micro_batch, MAX_MICRO), s.seq_len) for s in plan.stages))
    if len(shapes) == 1:  # one stage: a shorter evaluation length still shows a shape change
        shapes.append((shapes[0][0], shapes[0][1] // 2))
    models = {}
    for name in ("compiled", "eager"):
        model = build_model(spec, vocab_size=vocab, device="cpu")
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True))
    apply_compile(models["compiled"][0], Compile(enabled=True, scope=spec.model.compile.scope), "cpu")
    generator = torch.Generator().manual_seed(0)

    def step(name: str, shape: tuple[int, int]) -> float:
        model, optimizer = models[name]
        ids = torch.randint(0, vocab, shape, generator=generator)
        start = _cpu()
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return _cpu() - start

    def evaluation(shape: tuple[int, int]) -> float:
        model = models["compiled"][0]
        ids = torch.randint(0, vocab, shape, generator=generator)
        start = _cpu()
        with torch.no_grad():
            model.eval()
            model(ids, ids)
            model.train()
        return _cpu() - start

    out: dict = {"spec": spec_path.stem, "shapes": shapes, "parameters": sum(p.numel() for p in models["eager"][0].parameters())}
    for index, shape in enumerate(shapes):
        first = step("compiled", shape)
        step("compiled", shape), step("eager", shape)
        pairs = [(step("compiled", shape), step("eager", shape)) for _ in range(PAIRS)]
        compiled, eager = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
        out[f"shape{index}"] = {"first": first, "compiled": compiled, "eager": eager,
                                "ratio": statistics.median(a / b for a, b in pairs), "compile": max(0.0, first - compiled)}
    first_eval = evaluation(shapes[0])
    out["eval_compile"] = max(0.0, first_eval - statistics.median(evaluation(shapes[0]) for _ in range(2)))
    return out


def table_row(name: str, runs: int = 2) -> list[dict]:
    """Measure spec `name` cold, then warm, each in a fresh process sharing one inductor cache folder."""
    cache = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    rows = []
    try:
        for _ in range(runs):
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, __file__, "--child-table", str(SPECS[name])], env=env, text=True,
                                  capture_output=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            rows.append(row)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def print_table(name: str, cold: dict, warm: dict) -> None:
    s0, s1 = cold["shape0"], cold["shape1"]
    saving = s0["eager"] - s0["compiled"]
    ratio = statistics.mean([cold["shape0"]["ratio"], cold["shape1"]["ratio"], warm["shape0"]["ratio"], warm["shape1"]["ratio"]])
    breakeven = lambda seconds: f"{seconds / saving:6.0f}" if saving > 0 else "     -"  # noqa: E731
    shapes = " / ".join(f"{b}x{t}" for b, t in cold["shapes"])
    print(f"   {name:<13} {cold['parameters'] / 1e6:5.1f}M  {shapes:<15} cold {s0['compile']:5.1f} s  warm {warm['shape0']['compile']:4.1f} s"
          f"  stage change {s1['compile']:4.1f}/{warm['shape1']['compile']:3.1f} s  eval {cold['eval_compile']:4.1f}/{warm['eval_compile']:3.1f} s"
          f"  step {s0['eager']:5.2f} -> {s0['compiled']:5.2f} s ({ratio:.2f}x)  break-even {breakeven(s0['compile'])} cold"
          f" {breakeven(warm['shape0']['compile'])} warm  cache {warm['cache_bytes'] / 2**20:.1f} MiB", flush=True)


# ---------------------------------------------------------------- runs: whole programs


def scaled_overrides(steps: int) -> list[str]:
    """The quickstart for `steps` steps of 4096 tokens, half at seq_len 128, half at 256; eval off, one checkpoint."""
    half = steps // 2
    return [f"train.budget.tokens={steps * 4096}", f"data.curriculum.0.until_tokens={half * 4096}", "train.eval=null",
            "train.checkpoint.every_tokens=null", "track.aim.enabled=false", "train.log.every_steps=10"]


def timed(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stdout) of a command."""
    cpu, wall = _cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, text=True, capture_output=True, check=False)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return wall, cpu, done.stdout


def tabula_run(steps: int, cache: Path, runs: Path, label: str, *extra: str, max_steps: int | None = None) -> dict:
    run_dir = runs / label
    argv = [*TABULA, "run", str(SPECS["quickstart"]), *scaled_overrides(steps), *extra,
            "--headless", "--run-dir", str(run_dir)]
    if max_steps:
        argv += ["--max-steps", str(max_steps)]
    wall, cpu, _ = timed(argv, {**os.environ, "TABULA_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1"})
    manifest = json.loads((run_dir / "manifest.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    compiles = [e["message"] for e in events if e["kind"] == "log" and e["message"].startswith("torch.compile:")]
    return {"label": label, "wall": wall, "cpu": cpu, "compiled": manifest["compile"]["enabled"],
            "reason": manifest["compile"]["reason"], "compiles": compiles}


def plain_run(steps: int, cache: Path) -> dict:
    wall, cpu, _ = timed([sys.executable, __file__, "--child-plain", str(steps)], {**os.environ, "TABULA_CACHE_DIR": str(cache)})
    return {"label": "plain loop (nanoGPT-style, eager)", "wall": wall, "cpu": cpu, "compiled": False, "reason": "", "compiles": []}


def plain_loop(steps: int) -> None:
    """The peer: PlainGPT trained eagerly on tabula's batches, AdamW, cosine schedule, clipping, a checkpoint at the end."""
    import math

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_model import PlainGPT

    from tabula.compiler import make_plan
    from tabula.runtime.data import Sampler, prepare
    from tabula.schemas.loader import load_spec

    spec = load_spec(SPECS["quickstart"], scaled_overrides(steps))
    prepared = prepare(spec)
    plan = make_plan(spec, vocab_size=prepared.vocab_size)
    sampler = Sampler(prepared, plan.stages, spec.seed)
    torch.manual_seed(spec.seed)
    model = PlainGPT(prepared.vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=2e-3, betas=(0.9, 0.95), foreach=True)
    for step in range(plan.total_steps):
        stage = plan.stage_at(step * plan.batch_tokens)
        lr = 2e-3 * (0.55 + 0.45 * math.cos(math.pi * step / plan.total_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sampler.next_batch(stage.sequences_per_step, stage.seq_len)
        for micro in range(stage.grad_accum):
            rows = slice(micro * stage.micro_batch, (micro + 1) * stage.micro_batch)
            _, loss = model(batch.input_ids[rows], batch.targets[rows])
            (loss / stage.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(folder) / "ckpt.pt")


def runs(steps: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-compile-runs-"))
    cache, folders = work / "cache", work / "runs"
    try:
        subprocess.run([*TABULA, "prepare", str(SPECS["quickstart"])], check=True, capture_output=True,
                       env={**os.environ, "TABULA_CACHE_DIR": str(cache)})
        rows = [plain_run(steps, cache), tabula_run(steps, cache, folders, "tabula eager", "model.compile.enabled=false")]
        rows.append(tabula_run(steps, cache, folders, "tabula auto, cold cache"))
        shutil.rmtree(cache / "compile", ignore_errors=True)
        rows.append(tabula_run(steps, cache, folders, "tabula compiled, cold cache", "model.compile.enabled=true"))
        rows.append(tabula_run(steps, cache, folders, "tabula auto, warm cache"))
        peer = rows[0]
        print(f"   the quickstart's `tabula run`, {steps} steps (eval off); ratios against the plain loop, wall (CPU)")
        for row in rows:
            print(f"   {row['label']:<34} {row['wall']:7.1f} s ({row['cpu']:7.1f} s)  {row['wall'] / peer['wall']:.3f}x "
                  f"({row['cpu'] / peer['cpu']:.3f}x)  {'compiled' if row['compiled'] else 'eager'}", flush=True)
            for line in row["compiles"]:
                print(f"      {line}")
        shutil.rmtree(cache / "compile", ignore_errors=True)
        short = [tabula_run(steps, cache, folders, "20 steps, auto, cold cache", max_steps=20),
                 tabula_run(steps, cache, folders, "20 steps, eager", "model.compile.enabled=false", max_steps=20)]
        for row in short:
            print(f"   {row['label']:<34} {row['wall']:7.1f} s ({row['cpu']:7.1f} s)  {'compiled' if row['compiled'] else 'eager'}: {row['reason']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=int(os.environ.get("BENCH_COMPILE_STEPS", "384")), help="steps of the whole runs")
    parser.add_argument("--table", nargs="*", default=None, help="specs of the table (default: the quickstart and every preset)")
    parser.add_argument("--no-table", action="store_true")
    parser.add_argument("--no-runs", action="store_true")
    parser.add_argument("--child-table", help=argparse.SUPPRESS)
    parser.add_argument("--child-plain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    if args.child_table:
        print(json.dumps(measure(Path(args.child_table))))
        return
    if args.child_plain:
        plain_loop(args.child_plain)
        return
    if not args.no_table:
        print("   spec          params  micro x seq     compile: training graphs cold/warm, stage change and evaluation "
              "cold/warm; steady step eager -> compiled (CPU s, 1 thread); break-even steps")
        for name in args.table or list(SPECS):
            cold, warm = table_row(name)
            print_table(name, cold, warm)
    if not args.no_runs:
        runs(args.steps)


if __name__ == "__main__":
    main(sys.argv[1:])
