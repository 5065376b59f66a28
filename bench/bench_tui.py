"""Does watching a run slow it down? Training-step time with the dashboard attached vs headless.

A stand-in training loop (CPU-bound matrix multiplies, all cores, as a CPU run is) appends a
`train` event to events.jsonl after every step, more often than the runtime does (it writes one
every `train.log.every_steps`, 10 by default). The same loop runs headless and with the real
`tabula watch` (niced as it nices itself, drawing into a 160x48 pseudo-terminal, so the escape
codes it writes are paid for as in a real terminal) tailing the file from another process.
Rounds alternate, and each attached round is compared with the headless rounds beside it, so
that a machine busy with something else for a while weighs on both sides. Reported: the median
of those ratios (target: within 2%), the dashboard's CPU use while attached and the machine's load.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

STEPS = 200
ROUNDS = 5  # attached rounds; headless rounds surround each one
MATRIX = 320  # a step of tens of milliseconds on a laptop core: a few seconds of training a round
SIZE = (160, 48)


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


class _Watcher:
    """`tabula watch RUN_DIR` in a pseudo-terminal of SIZE, its output read and dropped as a terminal would."""

    def __init__(self, run_dir: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(SIZE[0]), LINES=str(SIZE[1]))
        self.process = subprocess.Popen([sys.executable, "-m", "tabula.cli", "watch", str(run_dir)], stdin=slave,
                                        stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master, self.written = master, 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.written += len(chunk)

    def wait_drawn(self, timeout: float = 60.0) -> None:
        """Until it has drawn its first frames and gone quiet (imports and start-up are not measured)."""
        until, last = time.monotonic() + timeout, -1
        while time.monotonic() < until and (self.written < 1000 or self.written != last):
            last = self.written
            time.sleep(0.5)

    def close(self) -> None:
        os.write(self.master, b"q")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def _round(attached: bool) -> tuple[float, tuple[float, float] | None]:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        (run_dir / "events.jsonl").touch()
        watcher = None
        if attached:
            watcher = _Watcher(run_dir)
            watcher.wait_drawn()
            cpu_before, wall_before, written_before = _cpu_seconds(watcher.process.pid), time.perf_counter(), watcher.written
        times = _train(run_dir)
        cpu = None
        if watcher is not None:
            time.sleep(1.0)  # it draws the end of the run
            wall = time.perf_counter() - wall_before
            cpu = (_cpu_seconds(watcher.process.pid) - cpu_before) / wall, (watcher.written - written_before) / wall
            watcher.close()
        return statistics.median(times), cpu


def main() -> None:
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or "all"
    load_before = os.getloadavg()[0]
    headless = [_round(False)[0]]
    attached, cpu, ratios = [], [], []
    for _ in range(ROUNDS):
        step, share = _round(True)
        headless.append(_round(False)[0])
        attached.append(step)
        cpu.append(share)
        ratios.append(step / statistics.mean(headless[-2:]))  # against the headless rounds either side
    base, watched = statistics.median(headless), statistics.median(attached)
    print(f"   BLAS threads: {threads}; machine load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"on {os.cpu_count()} cores")
    print(f"   step time headless            {1000 * base:7.2f} ms (median of {ROUNDS + 1} rounds x {STEPS} steps)")
    print(f"   step time, dashboard attached {1000 * watched:7.2f} ms (median of {ROUNDS} rounds)")
    print(f"   attached / headless           {statistics.median(ratios):7.3f}x  (target <= 1.02; the median of each "
          f"attached round against the headless ones beside it: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"ratio of the medians {watched / base:.3f})")
    print(f"   dashboard CPU while attached  {100 * statistics.median(c for c, _ in cpu):6.1f}% of one core, niced; "
          f"{statistics.median(w for _, w in cpu) / 1024:.1f} KiB/s to its terminal "
          f"({1 / base:.0f} events/s written; tabula watch in a {SIZE[0]}x{SIZE[1]} pseudo-terminal)")

if __name__ == "__main__":
    main()
