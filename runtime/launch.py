"""Start a DeepSpeed run's ranks and watch them: `tabula run SPEC --nproc N` (or backend deepspeed).

    launch(args, spec) -> exit status          (tabula/commands/run.py calls it)

The launching process (the `tabula run` command) does what happens once: it fills the token cache,
prepares a resume that changes the world size or ZeRO stage (runtime/reshard.py), then starts the
ranks through DeepSpeed's launcher (`python -m deepspeed.launcher.launch` on this machine,
`python -m deepspeed.launcher.runner --hostfile` across nodes). On a machine without GPUs the ranks run on the CPU over gloo, each
with its share of the cores. The launcher watches the ranks: when one exits with an error it stops the
others. This process passes rank 0's progress lines through (DeepSpeed's own log lines are held back),
turns the first Ctrl-C / SIGTERM into a stop request (the ranks finish the step and checkpoint
together), and makes sure events.jsonl ends with an `end` event naming the failing rank and its error,
whatever happened to the ranks.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import TextIO

from tabula.schemas.rundir_protocol import RANKS_DIR

# DeepSpeed's launcher and ranks log every spawn, kill and accelerator choice; the user sees tabula's lines
NOISE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING|DEBUG)\]"
    r"|^DeepSpeed .* built successfully"
    r"|FutureWarning|UserWarning|^\s+return func\(|^\s+warnings\.warn"
)
EXIT_LINE = re.compile(r"exits with return code = (-?\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_command(spec_path: str, run_dir: Path, world_size: int, *, overrides=(), resume_from=None,
                 max_steps=None, hostfile: str | None = None, port: int | None = None) -> list[str]:
    """The DeepSpeed launcher command line that starts every rank of a run: its multi-node runner with a
    hostfile; on this machine its per-node launcher directly (what the runner would start, one
    DeepSpeed import sooner)."""
    port = port or free_port()
    if hostfile:
        command = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--hostfile", hostfile,
                   "--master_port", str(port)]
    else:
        world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(world_size))}).encode()).decode()
        command = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
                   "--master_addr=127.0.0.1", f"--master_port={port}"]
    command += ["--no_local_rank", "--module", "tabula.runtime.rank", "--spec", str(spec_path), "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--override", override]
    if resume_from is not None:
        command += ["--resume", str(resume_from)]
    if max_steps is not None:
        command += ["--max-steps", str(max_steps)]
    return command


def rank_environment(world_size: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        on_cpu = not torch.cuda.is_available()
    except ImportError:
        on_cpu = True
    if on_cpu:  # the ranks share this machine's cores; more threads than cores slows every rank down
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    return env


def launch(args, spec) -> int:
    """`tabula run` on DeepSpeed ranks (`args`: the run command's arguments; `spec`: the loaded spec).
    Checks the plan and DeepSpeed config, opens the run folder (or the resumed one), prepares a resume
    onto another world size or ZeRO stage, starts and watches the ranks. Returns the exit status:
    0 finished or stopped (130/143 after SIGINT/SIGTERM), 2 bad input, 3 the run failed."""
    import torch

    from tabula.compiler import make_plan
    from tabula.compiler.deepspeed_config import deepspeed_config
    from tabula.report import print_errors
    from tabula.schemas.canonical import spec_hash as hash_of
    from tabula.schemas.errors import SpecErrors

    from .deepspeed_check import check_config
    from .reshard import ReshardError, prepare_resume
    from .session import EXIT_BAD_INPUT, EXIT_RUN_FAILED, open_run, prepare_data, resolve_resume

    world_size = args.nproc or spec.parallel.world_size
    hostfile = None
    if spec.parallel.hostfile:
        hostfile = Path(spec.base_dir) / spec.parallel.hostfile  # relative to the spec, as every path in it
        slots = hostfile_slots(hostfile)
        if slots is None:
            _error(f"parallel.hostfile: cannot read {hostfile} (DeepSpeed's format: one `HOST slots=N` a line)")
            return 2
        if args.nproc is None:
            world_size = slots
        elif slots != world_size:
            _error(f"--nproc {world_size} differs from the {slots} slots of {hostfile}")
            return 2
    if spec.parallel.backend != "deepspeed":
        _error(f"--nproc {world_size} runs DeepSpeed ranks: add parallel.backend=deepspeed "
               f"(and parallel.zero.stage=1|2|3 to shard state over the ranks)")
        return EXIT_BAD_INPUT
    resume = resolve_resume(args, spec)
    if resume is None:
        return EXIT_BAD_INPUT
    resume_run, checkpoint, changes = resume
    prepared = prepare_data(spec, args.cache_dir)  # fills the token cache once, before N ranks read it
    if prepared is None:
        return EXIT_BAD_INPUT
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        plan = make_plan(spec, world_size=world_size, vocab_size=prepared.vocab_size, device_type=device_type)
    except SpecErrors as errors:
        print_errors(errors.errors)
        return EXIT_BAD_INPUT
    problems = check_config(deepspeed_config(spec, plan), world_size=world_size)
    if problems:
        _error("DeepSpeed refuses the config this spec lowers to:\n" + "\n".join(f"  {p}" for p in problems))
        return EXIT_BAD_INPUT
    if checkpoint is not None:
        try:
            move = prepare_resume(Path(checkpoint), spec.parallel.zero.stage, world_size, spec=spec)
        except ReshardError as error:
            _error(f"cannot resume from {checkpoint}: {error}")
            return EXIT_BAD_INPUT
        if move.changes:
            print(f"resuming {move.text} through a universal checkpoint: weights and optimizer state kept", flush=True)
    try:
        run = open_run(args, spec, prepared=prepared, spec_hash=hash_of(spec), resume_run=resume_run, changes=changes)
    except FileExistsError as error:
        _error(str(error))
        return EXIT_BAD_INPUT
    for note in plan.notes:
        print(f"note: {note}")
    where = f"{world_size} ranks from {hostfile}" if hostfile else f"{world_size} rank{'s' * (world_size > 1)} on this machine"
    print(f"run folder: {run.path}\nDeepSpeed ZeRO-{spec.parallel.zero.stage}, {where} ({device_type}, {plan.precision})", flush=True)
    status, signum = start_ranks(args.spec, run.path, world_size, overrides=args.overrides, resume_from=checkpoint,
                                 max_steps=args.max_steps, hostfile=str(hostfile) if hostfile else None, cache_dir=args.cache_dir)
    if status == 0 and signum is not None:
        return 128 + signum
    return EXIT_RUN_FAILED if status else 0


def hostfile_slots(path: Path) -> int | None:
    """The ranks a DeepSpeed hostfile offers (the sum of its `slots=N`), or None when it cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"\S+\s+slots\s*=\s*(\d+)", line)
        if match is None:
            return None
        total += int(match.group(1))
    return total or None


def _error(message: str) -> None:
    sys.stderr.write(f"tabula run: {message}\n")
    sys.stderr.flush()


def start_ranks(spec_path: str | os.PathLike, run_dir: str | os.PathLike, world_size: int, *, overrides=(),
                resume_from=None, max_steps: int | None = None, hostfile: str | None = None,
                cache_dir: str | None = None, out: TextIO | None = None) -> tuple[int, int | None]:
    """Start the ranks of a run whose folder exists, watch them, and make sure events.jsonl ends with an
    `end` event. Returns (0 or 3, the stop signal received or None)."""
    out = out or sys.stdout
    run_dir = Path(run_dir)
    (run_dir / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / RANKS_DIR).glob("rank-*.error"):  # from an earlier attempt of this run
        stale.unlink()
    command = rank_command(str(spec_path), run_dir, world_size, overrides=overrides, resume_from=resume_from,
                           max_steps=max_steps, hostfile=hostfile)
    env = rank_environment(world_size)
    if cache_dir:
        env["TABULA_CACHE_DIR"] = str(Path(cache_dir).resolve())
    exit_codes, tail, signals_seen = _supervise(command, env, run_dir, out)
    return _finish(run_dir, exit_codes, tail, out), (signals_seen[0] if signals_seen else None)


def _supervise(command: list[str], env: dict, run_dir: Path, out: TextIO) -> tuple[list[int], deque, list[int]]:
    """Run the launcher in its own session (a terminal's Ctrl-C reaches only this process), passing its
    output through. The first SIGINT/SIGTERM asks the ranks to stop; a second ends them."""
    from tabula.schemas.rundir_protocol import request

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, start_new_session=True)
    signals_seen = []

    def on_signal(signum, frame):
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            request(run_dir, "stop")
            out.write(f"\n{signal.Signals(signum).name}: the ranks finish this step and write a checkpoint "
                      f"(again to end them now)\n")
        else:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    exit_codes: list[int] = []
    tail: deque = deque(maxlen=40)
    try:
        for line in process.stdout:
            found = EXIT_LINE.search(line)
            if found:
                exit_codes.append(int(found.group(1)))
                continue
            tail.append(line.rstrip("\n"))
            if not NOISE.search(line):
                out.write(line)
                out.flush()
        process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if process.returncode and not exit_codes:
        exit_codes.append(process.returncode)
    return exit_codes, tail, signals_seen


def _finish(run_dir: Path, exit_codes: list[int], tail: deque, out: TextIO) -> int:
    """The run's exit status from events.jsonl; writes the `end` event rank 0 could not write."""
    from tabula.schemas.rundir_protocol import EVENTS_FILE, end_event

    from .events import EventWriter, read_events

    path = run_dir / EVENTS_FILE
    end = end_event(run_dir)
    if end is not None and not exit_codes:
        return 0 if end["reason"] in ("finished", "stopped") else 3
    errors = sorted((run_dir / RANKS_DIR).glob("rank-*.error"))
    if errors:
        message = errors[0].read_text(encoding="utf-8").strip().splitlines()[0]
    elif exit_codes:
        code = exit_codes[0]
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exited with status {code}"
        message = f"a rank {how} without reporting an error"
    else:
        message = "the ranks ended without writing an end event"
    if end is not None and end["reason"] == "failed":
        out.write(f"run failed: {end['error']}\n")
        if exit_codes and message not in end["error"]:
            out.write(f"  ({message})\n")
        return 3
    if end is None:
        events = read_events(path) if path.exists() else []
        last = events[-1] if events else {"step": 0, "tokens": 0}
        writer = EventWriter(path)
        writer.emit("end", last.get("step", 0), last.get("tokens", 0), reason="failed", error=message)
        writer.close()
    out.write(f"run failed: {message}\n")
    if not errors and tail:
        out.write("last lines from the ranks:\n" + "\n".join(f"  {line}" for line in list(tail)[-10:]) + "\n")
    return 3
