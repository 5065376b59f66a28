"""Start a run's ranks and watch them: `tabula run SPEC --nproc N` (backend deepspeed or fsdp).

    ranks_for(spec, nproc) -> Ranks                 where the ranks run (session.prepare_run calls it)
    check_deepspeed_config(spec, plan)              DeepSpeed's word on the config, before any rank starts
    launch(ready, out=...) -> Outcome               start the ranks of a prepared run and watch them

`session.prepare_run` does what happens once, in the launching process: it fills the token cache,
prepares a resume that changes the world size or ZeRO stage (runtime/reshard.py) and opens the run
folder. `launch` then starts the ranks through DeepSpeed's launcher (`python -m
deepspeed.launcher.launch` on this machine, `python -m deepspeed.launcher.runner --hostfile` across
nodes); backend fsdp starts them through torchrun (`python -m torch.distributed.run`, with
`--nnodes/--node_rank` and parallel.rendezvous's endpoint across nodes). Each runs runtime/rank.py. On a machine without GPUs the ranks run on the CPU over gloo, each
with its share of the cores. The launcher watches the ranks: when one exits with an error it stops the
others. This process passes rank 0's progress lines through to `out` (DeepSpeed's own log lines are
held back), turns the first Ctrl-C / SIGTERM into a stop request (the ranks finish the step and
checkpoint together), and makes sure events.jsonl ends with an `end` event naming the failing rank and
its error, whatever happened to the ranks.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tabula.schemas.rundir_protocol import RANKS_DIR

from .errors import LaunchError
from .rank import RankOptions, rank_argv

if TYPE_CHECKING:
    from types import FrameType

    from tabula.compiler.plan import Plan
    from tabula.schemas.spec import Spec

    from .loop import Outcome
    from .runlock import RunLock
    from .session import PreparedRun, Ranks

# DeepSpeed's launcher and ranks log every spawn, kill and accelerator choice; the user sees tabula's lines
NOISE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING|DEBUG)\]"
    r"|^DeepSpeed .* built successfully"
    r"|FutureWarning|UserWarning|^\s+return func\(|^\s+warnings\.warn"
    r"|^[WIE]\d{4} [\d:.]+ \d+ .*(torch/distributed|api\.py)"  # torchrun's agent log lines
)
RETURN_CODE_LINE = re.compile(r"exits with return code = (-?\d+)")
# torchrun's summary of the first rank that failed ("Root Cause"): its rank and exit code
TORCHRUN_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank")
TORCHRUN_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def torchrun_failure(lines: Sequence[str]) -> tuple[int, int] | None:
    """(rank, exit code) of the root cause in torchrun's failure summary among `lines`, or None."""
    rank = code = None
    for line in lines:
        found_rank, found_code = TORCHRUN_ROOT_RANK.search(line), TORCHRUN_EXIT_CODE.search(line)
        if found_rank and rank is None:
            rank = int(found_rank.group(1))
        if found_code and code is None:
            code = int(found_code.group(1))
    return (rank, code) if rank is not None and code is not None else None


def exit_text(code: int) -> str:
    """`was killed by SIGKILL` or `exited with status 1`."""
    if code < 0 and -code in signal.valid_signals():
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rank_command(spec_path: str, run_dir: Path, world_size: int, *, overrides: Sequence[str] = (),
                 resume_from: Path | None = None, max_steps: int | None = None, hostfile: str | None = None,
                 port: int | None = None, backend: str = "deepspeed", nodes: int = 1, node_rank: int = 0,
                 rendezvous: str | None = None) -> list[str]:
    """The launcher command line that starts every rank of a run (on this node). DeepSpeed: its
    multi-node runner with a hostfile; on this machine its per-node launcher directly (what the runner
    would start, one DeepSpeed import sooner). fsdp: torchrun, `world_size // nodes` ranks on this node,
    node `node_rank` of `nodes` meeting at `rendezvous` (HOST:PORT; node 0 hosts it)."""
    options = RankOptions(spec_path=str(spec_path), run_dir=Path(run_dir), overrides=tuple(overrides),
                          resume_from=Path(resume_from) if resume_from is not None else None, max_steps=max_steps,
                          backend=backend)
    if backend == "fsdp":
        host, port = (rendezvous.rsplit(":", 1)[0], int(rendezvous.rsplit(":", 1)[1])) if rendezvous else \
            ("127.0.0.1", port or free_port())
        # static rendezvous: node ranks as given, node 0 serves the store; a failed rank ends the others
        return [sys.executable, "-u", "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={node_rank}",
                f"--nproc_per_node={world_size // nodes}", f"--master_addr={host}", f"--master_port={port}",
                "--max_restarts=0", "--monitor_interval=0.5", "--module", "tabula.runtime.rank", *rank_argv(options)]
    port = port or free_port()
    if hostfile:
        command = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--hostfile", hostfile,
                   "--master_port", str(port)]
    else:
        world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(world_size))}).encode()).decode()
        command = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
                   "--master_addr=127.0.0.1", f"--master_port={port}"]
    return command + ["--no_local_rank", "--module", "tabula.runtime.rank", *rank_argv(options)]


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


# ---------------------------------------------------------------- before the ranks start


def ranks_for(spec: Spec, nproc: int | None) -> Ranks:
    """Where a DeepSpeed run's ranks run: `nproc` on this machine (default parallel.world_size), or the
    slots of `parallel.hostfile`. Raises LaunchError when the spec cannot run on ranks as asked."""
    from .session import Ranks

    world_size = nproc or spec.parallel.world_size
    hostfile = None
    if spec.parallel.hostfile:
        hostfile = Path(spec.base_dir) / spec.parallel.hostfile  # relative to the spec, as every path in it
        slots = hostfile_slots(hostfile)
        if slots is None:
            raise LaunchError(f"parallel.hostfile: cannot read {hostfile} (DeepSpeed's format: one `HOST slots=N` a line)")
        if nproc is None:
            world_size = slots
        elif slots != world_size:
            raise LaunchError(f"--nproc {world_size} differs from the {slots} slots of {hostfile}")
    if spec.parallel.backend not in ("deepspeed", "fsdp"):
        raise LaunchError(f"--nproc {world_size} runs ranks: add parallel.backend=fsdp (FSDP2 through torchrun) or "
                          f"parallel.backend=deepspeed (and parallel.zero.stage=1|2|3 to shard state over the ranks)")
    if spec.parallel.backend == "fsdp":
        import torch

        from .parallel.fsdp import FsdpPolicy, check_policy

        fsdp = spec.parallel.fsdp
        problem = check_policy(FsdpPolicy(fsdp.reshard_after_forward, spec.parallel.precision, fsdp.offload),
                               "cuda" if torch.cuda.is_available() else "cpu")
        if problem:  # before anything is prepared: the ranks would refuse it after their start-up
            raise LaunchError(problem)
        tensor, nodes = spec.parallel.tensor.size, spec.parallel.nodes
        if world_size % tensor:
            raise LaunchError(f"parallel.tensor.size {tensor} must divide the {world_size} ranks")
        if world_size % nodes:
            raise LaunchError(f"parallel.nodes {nodes} must divide the {world_size} ranks (the same ranks on each node)")
    return Ranks(world_size, hostfile)


def check_deepspeed_config(spec: Spec, plan: Plan) -> None:
    """Raises LaunchError, with DeepSpeed's own words, when DeepSpeed refuses the config the spec lowers to."""
    from tabula.compiler.deepspeed_config import deepspeed_config

    from .deepspeed_check import check_config

    problems = check_config(deepspeed_config(spec, plan), world_size=plan.world_size)
    if problems:
        raise LaunchError("DeepSpeed refuses the config this spec lowers to:\n" + "\n".join(f"  {p}" for p in problems))


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


# ---------------------------------------------------------------- the ranks


def launch(ready: PreparedRun, *, out: TextIO) -> Outcome:
    """Start the ranks of a prepared DeepSpeed or fsdp run (`ready.ranks`), watch them, and return how the
    run ended (its `signal`: the SIGINT/SIGTERM this process received and passed on as a stop request)."""
    if ready.ranks is None:
        raise ValueError("launch() starts ranks: this run was prepared for the local engine")
    options, ranks, parallel = ready.options, ready.ranks, ready.spec.parallel
    return start_ranks(options.spec_path, ready.run.path, ranks.world_size, overrides=options.overrides,
                       resume_from=ready.checkpoint, max_steps=options.max_steps,
                       hostfile=str(ranks.hostfile) if ranks.hostfile else None,
                       cache_dir=str(options.cache_dir) if options.cache_dir else None, out=out,
                       lock=ready.lock, events_offset=ready.events_offset, backend=parallel.backend,
                       nodes=parallel.nodes, rendezvous=parallel.rendezvous)


def start_ranks(spec_path: str | os.PathLike[str], run_dir: str | os.PathLike[str], world_size: int, *,
                overrides: Sequence[str] = (), resume_from: Path | None = None, max_steps: int | None = None,
                hostfile: str | None = None, cache_dir: str | None = None, out: TextIO | None = None,
                lock: RunLock | None = None, events_offset: int = 0, backend: str = "deepspeed", nodes: int = 1,
                node_rank: int = 0, rendezvous: str | None = None) -> Outcome:
    """Start the ranks of a run whose folder exists, watch them, and make sure events.jsonl ends with an
    `end` event of this session (whose events follow byte `events_offset`). `lock`: the run folder's lock
    (runtime/runlock.py), handed to DeepSpeed's launcher so that the run stays locked while it and its
    ranks live. `backend`, `nodes`, `node_rank`, `rendezvous`: see rank_command (a node other than 0 starts
    its own ranks only). Returns the run's Outcome, with the stop signal received (if any) as its `signal`."""
    out = out or sys.stdout
    run_dir = Path(run_dir)
    (run_dir / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    if node_rank == 0:
        for stale in (run_dir / RANKS_DIR).glob("rank-*.error"):  # from an earlier attempt of this run
            stale.unlink()
    command = rank_command(str(spec_path), run_dir, world_size, overrides=overrides, resume_from=resume_from,
                           max_steps=max_steps, hostfile=hostfile, backend=backend, nodes=nodes, node_rank=node_rank,
                           rendezvous=rendezvous)
    env = rank_environment(world_size // nodes)
    if cache_dir:
        env["TABULA_CACHE_DIR"] = str(Path(cache_dir).resolve())
    keep_fds: tuple[int, ...] = ()
    started = None
    if lock is not None and lock.fd is not None:
        keep_fds = (lock.fd,)
        started = functools.partial(lock.add_holder, what="torchrun" if backend == "fsdp" else "DeepSpeed launcher")
    exit_codes, tail, signals_seen = _supervise(command, env, run_dir, out, keep_fds=keep_fds, started=started)
    outcome = _finish(run_dir, exit_codes, tail, out, since=events_offset)
    if signals_seen:
        outcome = dataclasses.replace(outcome, signal=signal.Signals(signals_seen[0]).name)
    return outcome


def _supervise(command: list[str], env: dict[str, str], run_dir: Path, out: TextIO, keep_fds: Sequence[int] = (),
               started: Callable[[int], None] | None = None) -> tuple[list[int], deque[str], list[int]]:
    """Run the launcher in its own session (a terminal's Ctrl-C reaches only this process), passing its
    output through; `keep_fds` stay open in it (the run folder's lock), `started` gets its pid. The first
    SIGINT/SIGTERM asks the ranks to stop; a second ends them."""
    from tabula.schemas.rundir_protocol import ControlRequestError, request

    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, start_new_session=True, pass_fds=tuple(keep_fds))
    except OSError as error:
        out.write(f"cannot start the ranks' launcher: {error}\n")
        return [127], deque([str(error)]), []
    if started is not None:
        started(process.pid)
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            try:
                request(run_dir, "stop")
            except ControlRequestError as error:
                out.write(f"\n{error}; again to end the ranks now (without a checkpoint)\n")
                return
            out.write(f"\n{signal.Signals(signum).name}: the ranks finish this step and write a checkpoint "
                      f"(again to end them now)\n")
        else:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    exit_codes: list[int] = []
    tail: deque[str] = deque(maxlen=40)
    assert process.stdout is not None
    try:
        held: list[str] = []  # a traceback, until it shows whether it is torchrun's summary of a failed rank
        for line in process.stdout:
            found = RETURN_CODE_LINE.search(line)
            if found:
                exit_codes.append(int(found.group(1)))
                continue
            tail.append(line.rstrip("\n"))
            if held or line.startswith("Traceback (most recent call last):"):
                held.append(line)
                if "ChildFailedError" in line:  # torchrun's report: the rank's own error file says it better
                    held = []
                    for rest in process.stdout:
                        tail.append(rest.rstrip("\n"))
                    break
                if not line.startswith((" ", "Traceback")):  # the traceback's last line: someone else's
                    out.write("".join(held))
                    out.flush()
                    held = []
                continue
            if not NOISE.search(line):
                out.write(line)
                out.flush()
        if held:
            out.write("".join(held))
        process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if process.returncode and not exit_codes:
        exit_codes.append(process.returncode)
    return exit_codes, tail, signals_seen


def _finish(run_dir: Path, exit_codes: list[int], tail: Sequence[str], out: TextIO | None, *, since: int = 0) -> Outcome:
    """How the run ended, from events.jsonl (this session's events: after byte `since`) and the ranks' exit
    codes and error files; writes the `end` event rank 0 could not write, and to `out` the line saying why
    the run failed when rank 0's console could not (with the ranks' last output lines when no rank left an
    error)."""
    from tabula.schemas.rundir_protocol import EVENTS_FILE

    from .checkpoint import list_checkpoints
    from .events import EventWriter, read_events
    from .loop import Outcome

    path = run_dir / EVENTS_FILE
    events = read_events(path, offset=since) if path.exists() else []
    ends = [event for event in events if event.get("kind") == "end"]
    end = ends[-1] if ends else None  # this session's end: an earlier session's does not count after a resume
    if not events and since:  # ranks that failed before their start event: a resume goes on from its checkpoint
        earlier = read_events(path) if path.exists() else []
        events = earlier[-1:]
    last: dict[str, Any] = end or (events[-1] if events else {"step": 0, "tokens": 0})
    checkpoints = list_checkpoints(run_dir)
    ended = {"step": last.get("step", 0), "tokens": last.get("tokens", 0),
             "checkpoint": checkpoints[-1] if checkpoints else None}
    if end is not None and not exit_codes:
        return Outcome(end["reason"], error=end.get("error"), **ended)
    errors = sorted((run_dir / RANKS_DIR).glob("rank-*.error"))
    root = torchrun_failure(tail)
    if not errors and root is not None:  # torchrun named the rank that died silently: the run folder records it
        from .rank import write_error

        write_error(run_dir, root[0], f"rank {root[0]} {exit_text(root[1])} without reporting an error")
        errors = sorted((run_dir / RANKS_DIR).glob("rank-*.error"))
    if errors:
        message = errors[0].read_text(encoding="utf-8").strip().splitlines()[0]
    elif exit_codes:
        message = f"a rank {exit_text(exit_codes[0])} without reporting an error"
    else:
        message = "the ranks ended without writing an end event"
    out = out or sys.stdout
    if end is not None and end["reason"] == "failed":
        out.write(f"run failed: {end['error']}\n")
        if exit_codes and message not in end["error"]:
            out.write(f"  ({message})\n")
        return Outcome("failed", error=end["error"], **ended)
    if end is None:
        writer = EventWriter(path)
        writer.emit("end", ended["step"], ended["tokens"], reason="failed", error=message)
        writer.close()
    out.write(f"run failed: {message}\n")
    if not errors and tail:
        out.write("last lines from the ranks:\n" + "\n".join(f"  {line}" for line in list(tail)[-10:]) + "\n")
    return Outcome("failed", error=message, **ended)


# ---------------------------------------------------------------- the other nodes of a multi-node fsdp run


def check_join(spec: Spec, node_rank: int) -> None:
    """Raises LaunchError unless `spec` is a multi-node fsdp run that has a node `node_rank` (> 0)."""
    parallel = spec.parallel
    if parallel.backend != "fsdp" or parallel.nodes < 2:
        raise LaunchError(f"--node-rank joins a multi-node fsdp run: set parallel.backend=fsdp, parallel.nodes (> 1) "
                          f"and parallel.rendezvous (found backend {parallel.backend}, {parallel.nodes} node(s))")
    if not 0 < node_rank < parallel.nodes:
        raise LaunchError(f"--node-rank {node_rank}: this run has nodes 0-{parallel.nodes - 1} (node 0 is `tabula run` "
                          f"without --node-rank)")


def join_run(spec: Spec, spec_path: str, run_dir: Path, node_rank: int, *, overrides: Sequence[str] = (),
             nproc: int | None = None, cache_dir: str | None = None, out: TextIO | None = None,
             wait_s: float = 300.0, resume_from: Path | None = None) -> Outcome:
    """Node `node_rank` (> 0) of a multi-node fsdp run: start this node's ranks, which join node 0's at
    parallel.rendezvous, and watch them. Node 0 (`tabula run` without --node-rank) created `run_dir`, on
    a file system every node shares; this waits up to `wait_s` for it and writes nothing there but its
    ranks' error files: node 0's launcher writes the run's end. `resume_from`: the checkpoint node 0
    resumes (the ranks of every node load it). Returns the run's Outcome as node 0's
    events tell it (a failed one when this node's ranks failed). Raises LaunchError when the spec is not
    a multi-node fsdp run or the folder never appears."""
    import time

    from tabula.schemas.rundir_protocol import EVENTS_FILE

    from .events import read_events
    from .loop import Outcome
    from .rundir import RESOLVED_FILE

    parallel = spec.parallel
    check_join(spec, node_rank)
    world_size = nproc or parallel.world_size
    run_dir = Path(run_dir)
    deadline = time.monotonic() + wait_s
    while not (run_dir / RESOLVED_FILE).exists():
        if time.monotonic() > deadline:
            raise LaunchError(f"{run_dir} did not appear within {wait_s:.0f} s: start node 0 (`tabula run` with the same "
                              f"--run-dir on a file system both nodes share) first")
        time.sleep(0.5)
    out = out or sys.stdout
    command = rank_command(spec_path, run_dir, world_size, overrides=overrides, backend="fsdp", nodes=parallel.nodes,
                           node_rank=node_rank, rendezvous=parallel.rendezvous, resume_from=resume_from)
    env = rank_environment(world_size // parallel.nodes)
    if cache_dir:
        env["TABULA_CACHE_DIR"] = str(Path(cache_dir).resolve())
    events_file = run_dir / EVENTS_FILE
    # this session's events follow: node 0's rank 0 writes none before every node joined the rendezvous
    offset = events_file.stat().st_size if events_file.exists() else 0
    exit_codes, _, _ = _supervise(command, env, run_dir, out)
    events = read_events(events_file, offset=offset) if events_file.exists() else []
    # node 0's launcher writes the end once its ranks are gone: wait for it a little
    deadline = time.monotonic() + 30
    while not any(e.get("kind") == "end" for e in events) and time.monotonic() < deadline:
        time.sleep(0.5)
        events = read_events(events_file, offset=offset) if events_file.exists() else []
    end = next((e for e in reversed(events) if e.get("kind") == "end"), None)
    if end is not None:
        return Outcome(end["reason"], end.get("step", 0), end.get("tokens", 0), error=end.get("error"))
    errors = sorted((run_dir / RANKS_DIR).glob("rank-*.error"))
    error = errors[0].read_text(encoding="utf-8").strip().splitlines()[0] if errors else None
    return Outcome("failed" if exit_codes or error else "finished", 0, 0,
                   error=error or (f"this node's launcher exited with status {exit_codes[0]}" if exit_codes else None))
