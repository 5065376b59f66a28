"""Does watching a run slow it down? Training-step time with the dashboard attached vs headless.

A stand-in training loop (CPU-bound matrix multiplies, all cores, as a CPU run is) appends a
`train` event to events.jsonl after every step, more often than the runtime does (it writes one
every `train.log.every_steps`, 10 by default). The same loop runs headless and with the real
dashboard (DashboardApp, headless Textual, polling at its normal 4 Hz, charts and all) tailing
the file from another process; rounds alternate to spread machine noise over both. Reported:
the ratio of median step times (target: within 2%) and the dashboard's CPU use while attached.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabula.tui.launch import DASHBOARD_NICE

STEPS = 300
ROUNDS = 3
MATRIX = 320  # a step of tens of milliseconds on a laptop core: ~10 s of training a round

_DASHBOARD = """
import sys, asyncio
from tabula.tui.app import DashboardApp
async def main():
    app = DashboardApp(sys.argv[1])
    async with app.run_test(size=(160, 48)) as pilot:
        open(sys.argv[2], "w").close()  # ready: started and drawn its first frame
        while True:
            await asyncio.sleep(0.5)
            if app.screen.state.end_reason is not None:
                await asyncio.sleep(0.5)
                return
asyncio.run(main())
"""


def _train(run_dir: Path) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATRIX, MATRIX), dtype=np.float32)
    times = []
    with open(run_dir / "events.jsonl", "a") as events:
        start = {"kind": "start", "time": time.time(), "step": 0, "tokens": 0, "run_name": "bench", "spec_hash": "0" * 64,
                 "backend": "local", "world_size": 1, "device": "cpu", "precision": "fp32", "parameters": 1,
                 "total_steps": STEPS, "total_tokens": STEPS * 4096, "stages": [], "resumed_from": None}
        events.write(json.dumps(start) + "\n")
        events.flush()
        for step in range(1, STEPS + 1):
            began = time.perf_counter()
            b = a
            for _ in range(8):
                b = np.tanh(b @ a * 0.05)
            elapsed = time.perf_counter() - began
            times.append(elapsed)
            event = {"kind": "train", "time": time.time(), "step": step, "tokens": step * 4096, "loss": float(b[0, 0]) + 3,
                     "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 4096 / elapsed, "step_time": elapsed, "mfu": None,
                     "memory": None, "stage": 0}
            events.write(json.dumps(event) + "\n")
            events.flush()
        events.write(json.dumps({"kind": "end", "time": time.time(), "step": STEPS, "tokens": STEPS * 4096,
                                 "reason": "finished", "error": None}) + "\n")
    return times


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _round(attached: bool) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        (run_dir / "events.jsonl").touch()
        dashboard = None
        if attached:
            # niced as `tabula run` and `tabula watch` nice themselves (tui/launch.py)
            ready = run_dir / "ready"
            dashboard = subprocess.Popen([sys.executable, "-c", _DASHBOARD, str(run_dir), str(ready)],
                                         preexec_fn=lambda: os.nice(DASHBOARD_NICE))
            while not ready.exists():  # its start-up (imports, first frame) is not part of the measure
                time.sleep(0.1)
            time.sleep(0.5)
            cpu_before, wall_before = _cpu_seconds(dashboard.pid), time.perf_counter()
        times = _train(run_dir)
        cpu = None
        if dashboard is not None:
            cpu = (_cpu_seconds(dashboard.pid) - cpu_before) / (time.perf_counter() - wall_before)
            try:
                dashboard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
        return statistics.median(times), cpu


def main() -> None:
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or "all"
    print(f"   BLAS threads: {threads}; machine load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    headless, attached, cpu = [], [], []
    for _ in range(ROUNDS):
        headless.append(_round(False)[0])
        step, share = _round(True)
        attached.append(step)
        cpu.append(share)
    base, watched = statistics.median(headless), statistics.median(attached)
    print(f"   step time headless          {1000 * base:7.2f} ms (median of {ROUNDS} rounds x {STEPS} steps)")
    print(f"   step time, dashboard attached {1000 * watched:7.2f} ms")
    print(f"   attached / headless         {watched / base:7.3f}x   (target <= 1.02)")
    print(f"   dashboard CPU while attached {100 * statistics.median(cpu):6.1f}% of one core "
          f"({1 / (1000 * base / 1000):.0f} events/s written)")


if __name__ == "__main__":
    main()
