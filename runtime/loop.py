"""The train loop: steps, evaluation, samples, checkpoints and curriculum stages, over any engine.

    train(spec, plan, engine, run, prepared) -> Outcome

Every rank calls `train`; rank 0 alone writes events (and so the console and Aim). Each step draws
the global batch from the sampler (the same on every rank) and each rank takes its slice, so the
data order does not depend on the world size. Losses stay on the device between log intervals: the
only per-step host read is the finiteness of the gradient norm (never apply a non-finite update).
"""

from __future__ import annotations

import math
import os
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from tabula.compiler.estimate import flops_per_token
from tabula.compiler.routing import RoutingStats, imbalance, moe_layers, routing_step

from tabula.schemas import rundir_protocol as ctl
from .compile_watch import CompileLog, eager_unless
from . import trained_weights
from .checkpoint import (Checkpointer, CheckpointError, CheckpointWriteError, read_stream_state, restore_checkpoint, select_checkpoint,
                         stream_state_file)
from .data.errors import DataError
from .data.image_batches import image_rows
from .data.mixing import source_losses
from .events import EventWriter
from .faults import StopSignals, is_oom, oom_message
from .mfu import measure_cpu_peak, peak_flops
from .schedules import lr_at
from .tensorboard_log import TensorBoardTracker, make_tensorboard
from .tracking import AimTracker, make_tracker

if TYPE_CHECKING:
    from tabula.compiler.plan import Plan, StagePlan
    from .evaluation.in_training import TrainingBenchmarks
    from tabula.schemas.spec import Spec

    from .data.pipeline import PreparedData
    from .data.sampler import Batch
    from .engine import Engine
    from .rundir import RunDir

MAX_ROLLBACKS = 3  # in a row without getting past the failing step

EndReason = Literal["finished", "stopped", "failed"]
Listener = Callable[[dict[str, Any]], None]  # receives every event rank 0 writes (the console, Aim)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: `reason` finished | stopped | failed, after `step` optimizer steps and `tokens`
    training tokens; `error` says why it failed; `checkpoint` is the last good one (None when none was
    written); `signal` is the SIGINT/SIGTERM that stopped it, by name."""

    reason: EndReason
    step: int
    tokens: int
    error: str | None = None
    checkpoint: Path | None = None
    signal: str | None = None
    best_val_loss: float | None = None


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint's state.json."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    val_loss: float | None = None  # the latest evaluation's
    val_step: int | None = None


@dataclass
class Interval:
    """The steps since the last train event: the losses of those whose update was applied, summed on the
    device (no host read until the event), and all of them, applied or refused."""

    loss_sum: torch.Tensor
    applied: int = 0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    paused: float = 0.0  # seconds in evaluations and checkpoints, left out of the step time
    load: torch.Tensor | None = None  # a mixture of experts' expert shares (layers, experts), summed over the steps
    balance: torch.Tensor | None = None  # its balancing losses (layers,), summed over the steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_in_use(device: torch.device) -> int:
    """Peak CUDA memory allocated, or the process's resident memory on the CPU (bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def crossed(before: int, after: int, every: int | None) -> bool:
    """Whether a multiple of `every` lies in (before, after]; never for None or 0."""
    if not every:
        return False
    return before // every != after // every


class Trainer:
    """One run of the loop. Built by `train`; split into methods so each reads on its own."""

    def __init__(self, spec: Spec, plan: Plan, engine: Engine, run: RunDir, prepared: PreparedData, *, spec_hash: str,
                 max_steps: int | None, console: Listener | None) -> None:
        self.spec, self.plan, self.engine, self.run, self.prepared = spec, plan, engine, run, prepared
        self.max_steps = max_steps
        self.events = EventWriter(run.events if engine.is_main else None)
        if console is not None and engine.is_main:
            self.events.listeners.append(console)
        self.spec_hash = spec_hash
        self.tracker: AimTracker | None = None  # the Aim tracker, rank 0 (set by `train`)
        self.tensorboard: TensorBoardTracker | None = None  # track.tensorboard's, rank 0 (set by `train`)
        self.control = ctl.ControlFolder(run.path if engine.is_main else None)
        # processes: every rank (a pipeline's stages share one data-parallel rank, engine.world_size counts those)
        self.processes = getattr(engine, "processes", engine.world_size)
        self.control_every = 1 if self.processes == 1 else spec.train.log.every_steps
        train = spec.train
        self.checkpointer = Checkpointer(run.path, engine, keep_last=train.checkpoint.keep_last, keep_best=train.checkpoint.keep_best_by is not None)
        from .data import Sampler

        self.sampler = Sampler(prepared, plan.stages, spec.seed, spec.data.mixture, rank=engine.rank, world_size=engine.world_size)
        self.progress = Progress()
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None
        self.val_batches: dict[int, list[Batch]] = {}
        self.rollbacks, self.failed_step = 0, 0
        self.skips_in_a_row = 0  # refused updates since the last applied one (train.max_consecutive_skips)
        self.stop_error: str | None = None
        self.write_error: str | None = None  # the latest checkpoint the disk refused
        self.lr = 0.0
        self.mixture_moved = False  # the online mixture updated in this step (data.mixture)
        self.peak: float | None = None
        self.flops: dict[int, float] = {}  # model FLOPs per token of each stage (set by `loop`)
        self.compiles = CompileLog(plan.compile, spec.name, run if engine.is_main else None, self.log)
        self.routers = moe_layers(engine.model)  # mixture-of-experts layers: routing_step after each update
        self.routing: RoutingStats | None = None  # the last step's RoutingStats
        self.benchmarks: TrainingBenchmarks | None = None  # train.eval.benchmarks, made at the first evaluation

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.emit(kind, self.progress.step, self.progress.tokens, **fields)

    def log(self, level: str, message: str) -> None:
        self.events.log(level, message, self.progress.step, self.progress.tokens)


    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "step": p.step,
            "tokens": p.tokens,
            "best_val_loss": p.best_val_loss,
            "val_loss": p.val_loss,
            "val_step": p.val_step,
            "sampler": self.sampler.state_dict(),
            "stage": self.plan.stage_at(p.tokens).index,
            "vocab_size": self.plan.vocab_size,
            "world_size": self.engine.world_size,
            "precision": self.engine.precision,
            "time": time.time(),
        }

    def restore(self, checkpoint: Path, *, data_too: bool = True) -> None:
        state = restore_checkpoint(self.engine, checkpoint)
        p = self.progress
        p.step, p.tokens = state["step"], state["tokens"]
        p.best_val_loss, p.val_loss, p.val_step = state.get("best_val_loss"), state.get("val_loss"), state.get("val_step")
        if data_too:
            note = self.sampler.load_state_dict(state["sampler"])
            if note:
                self.log("warning", note)
            if self.sampler.streams is not None:  # this rank's stream position (streamed sources)
                self.sampler.streams.load_state_dict(read_stream_state(checkpoint, self.engine.rank))
        self.last_checkpoint, self.last_checkpoint_step = checkpoint, p.step

    def checkpoint(self) -> Path | None:
        """Write a checkpoint now (once per step). A disk refusal is reported and returns None; training goes
        on or stops (`stop_error` set) as train.checkpoint.on_write_error says."""
        if self.last_checkpoint_step == self.progress.step and self.last_checkpoint is not None and self.last_checkpoint.exists():
            return self.last_checkpoint
        try:
            streams = self.sampler.streams
            rank_files = {stream_state_file(self.engine.rank): streams.state_dict()} if streams is not None else None
            path = self.checkpointer.save(self.progress.step, self.state(), rank_files)
        except CheckpointWriteError as error:
            self.log("error", str(error))
            self.write_error = str(error)
            if not error.recoverable or self.spec.train.checkpoint.on_write_error == "stop":
                self.stop_error = f"{error} (train.checkpoint.on_write_error: {self.spec.train.checkpoint.on_write_error})"
            return None
        self.write_error = None
        self.last_checkpoint, self.last_checkpoint_step = path, self.progress.step
        if self.engine.is_main:
            best = self.checkpointer.best() == path if self.checkpointer.keep_best else False
            self.emit("checkpoint", path=str(path.relative_to(self.run.path)), best=best)
        return path

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> None:
        spec_eval = self.spec.train.eval
        assert spec_eval is not None  # the loop evaluates only when train.eval is set
        stage = self.plan.stage_at(max(0, self.progress.tokens - 1))
        if stage.seq_len not in self.val_batches:
            from .data import validation_batches

            batches = list(validation_batches(self.prepared, spec_eval.tokens, stage.seq_len, stage.micro_batch))
            world, rank = self.engine.world_size, self.engine.rank
            usable = (len(batches) // world) * world if len(batches) >= world else len(batches)
            self.val_batches[stage.seq_len] = batches[rank:usable:world] if len(batches) >= world else batches
        batches = self.val_batches[stage.seq_len]
        if not batches:
            self.log("warning", "the validation split is too small for one batch: no evaluation")
            return
        total = torch.zeros((), device=self.engine.device)
        with eager_unless(self.plan.compile.evaluation):  # compiled where its graphs repay their compile
            for batch in batches:
                total += self.engine.evaluate(batch.input_ids, batch.targets, batch.document_ids, **image_rows(batch))
        val_loss = float(self.engine.reduce_mean(total / len(batches)))
        p = self.progress
        p.val_loss, p.val_step = val_loss, p.step
        if math.isfinite(val_loss) and (p.best_val_loss is None or val_loss < p.best_val_loss):
            p.best_val_loss = val_loss
        self.emit("eval", val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50.0)), best_val_loss=p.best_val_loss)
        self.sample()
        self.benchmark()
        self.compiles.note("for evaluation and sampling", training=False)

    def sample(self) -> None:
        assert self.spec.train.eval is not None  # samples follow evaluations
        sample = self.spec.train.eval.sample
        if sample.max_new_tokens == 0:
            return
        tokenizer = self.prepared.tokenizer
        # The prompt starts a document: after the end-of-document token, as the model saw documents begin.
        prompt_ids = [self.prepared.eos_id] + tokenizer.encode(sample.prompt).ids
        with eager_unless(compiled=False):  # a batch of one growing token by token: graphs would cost more than they save
            new_ids = self.engine.generate(prompt_ids, sample.max_new_tokens)
        self.emit("sample", prompt=sample.prompt, text=tokenizer.decode(new_ids))

    def benchmark(self) -> None:
        """train.eval.benchmarks: lm-eval tasks on the model as it is now (evaluation/in_training.py)."""
        if self.benchmarks is None:
            from .evaluation.in_training import TrainingBenchmarks

            self.benchmarks = TrainingBenchmarks.for_run(self.spec, self.prepared, self.engine)
        with eager_unless(compiled=False):
            results, problem = self.benchmarks.run(self.engine.model, self.engine.device)
        if problem:
            self.log("warning", problem)
        if results is not None:
            self.emit("benchmark", results=results.scores, checkpoint=None, limit=results.limit)

    # ------------------------------------------------------------------ the step

    def train_step(self, stage: StagePlan) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's slice of the global batch. Returns (mean loss, grad norm)."""
        engine = self.engine
        per_rank = stage.sequences_per_step // engine.world_size
        start = engine.rank * per_rank
        batch = self.sampler.next_batch(stage.sequences_per_step, stage.seq_len, range(start, start + per_rank))
        step_loss: torch.Tensor | None = None
        for micro in range(stage.grad_accum):
            lo = start + micro * stage.micro_batch
            hi = lo + stage.micro_batch
            doc_ids = batch.document_ids[lo:hi] if batch.document_ids is not None else None
            loss = engine.forward_backward(batch.input_ids[lo:hi], batch.targets[lo:hi], doc_ids, stage.grad_accum, **image_rows(batch, lo, hi))
            step_loss = loss if step_loss is None else step_loss + loss
        lr = lr_at(self.spec.train.schedule, self.spec.train.optimizer.lr, self.progress.tokens + self.plan.batch_tokens,
                   self.plan.budget_tokens, self.plan.warmup_tokens)
        self.lr = lr
        grad_norm = engine.step(lr)
        self.routing = routing_step(engine.model, self.routers) if self.routers else None
        assert step_loss is not None  # every stage has grad_accum >= 1
        if self.sampler.wants_losses():  # data.mixture: online, at its update: each source's loss on this batch
            self.sampler.observe(source_losses(batch, range(start, start + per_rank), self.sampler.sources, engine.evaluate, engine.reduce_mean))
            self.mixture_moved = True  # reported once the step is counted
        return step_loss / stage.grad_accum, grad_norm

    def emit_mixture(self) -> None:
        """Each source's sampling weight, training tokens seen and (online) latest loss, under data.mixture."""
        if self.spec.data.mixture is not None:
            online = self.sampler.online
            self.emit("mixture", weights=self.sampler.weights(), tokens_seen=dict(self.sampler.cursors),
                      losses=dict(online.losses) if online is not None else None)

    def on_nonfinite(self, loss: torch.Tensor) -> str:
        """Apply train.on_nonfinite after a step whose update was refused. Returns "go" or "stop"."""
        policy = self.spec.train.on_nonfinite
        what = "loss" if not torch.isfinite(loss) else "gradient"
        at = f"non-finite {what} at step {self.progress.step} ({self.progress.tokens} tokens)"
        if policy == "skip":
            self.skips_in_a_row += 1
            limit = self.spec.train.max_consecutive_skips
            if self.skips_in_a_row >= limit:
                last = self.last_good_checkpoint()
                where = f"the last good checkpoint is {last.relative_to(self.run.path)}" if last else "no checkpoint was written yet"
                self.stop_error = (f"{at}: {self.skips_in_a_row} updates in a row were non-finite and skipped "
                                   f"(train.max_consecutive_skips: {limit}), so the model is not training (lr {self.lr:.3g}); {where}")
                return "stop"
            in_a_row = f" ({self.skips_in_a_row} in a row)" if self.skips_in_a_row > 1 else ""
            self.log("warning", f"{at}: batch skipped, the update was not applied{in_a_row}")
            return "go"
        last = self.last_good_checkpoint()
        if policy == "stop" or last is None:
            where = f"the last good checkpoint is {last.relative_to(self.run.path)}" if last else "no checkpoint was written yet"
            self.stop_error = f"{at}; on_nonfinite: stop. The update was not applied; {where}"
            return "stop"
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            self.stop_error = f"{at}: still non-finite after {MAX_ROLLBACKS} rollbacks; {last.relative_to(self.run.path)} is the last good checkpoint"
            return "stop"
        self.restore(last, data_too=False)  # the model goes back; the data goes on past the bad window
        self.log("warning", f"{at}: rolled back to {last.relative_to(self.run.path)} (step {self.progress.step}); "
                 f"the data window since then is skipped")
        return "go"

    def last_good_checkpoint(self) -> Path | None:
        """The newest intact checkpoint at or before this step (damaged ones skipped with a warning)."""
        # step 0: a resume that failed while loading; its checkpoint's step is not known yet
        selection = select_checkpoint(self.run.path, up_to=self.progress.step or None)
        for skipped in selection.skipped:
            self.log("warning", skipped.message)
        return selection.checkpoint

    # ------------------------------------------------------------------ the loop

    def start_event(self, resumed_from: Path | None, parameters: int) -> None:
        plan = self.plan
        applied = trained_weights.applied(self.engine.model)  # what train.finetune changed (compiler/adapters.py), or None
        self.emit(
            "start",
            run_name=self.run.name,
            spec_hash=self.spec_hash,
            backend=self.spec.parallel.backend,
            world_size=self.engine.world_size,
            device=str(self.engine.device),
            precision=self.engine.precision,
            parameters=parameters,
            trainable_parameters=applied.trainable if applied is not None else parameters,
            finetune=applied.method if applied is not None else None,
            total_steps=plan.total_steps,
            total_tokens=plan.total_tokens,
            stages=[{"index": s.index, "until_tokens": s.end_tokens, "seq_len": s.seq_len, "mix": s.mix} for s in plan.stages],
            resumed_from=str(resumed_from) if resumed_from else None,
            compile=self.plan.compile.as_dict(),
        )
        self.compiles.record()

    def loop(self, signals: StopSignals) -> Outcome:
        spec, plan, engine, p = self.spec, self.plan, self.engine, self.progress
        every_eval = plan.eval_every_tokens if spec.train.eval else None
        every_ckpt = plan.checkpoint_every_tokens
        log_every = spec.train.log.every_steps
        # ranks decide alone when to log, and the log reads a collective: the clock only for one process
        log_seconds = spec.train.log.every_seconds if self.processes == 1 else None
        self.flops = {s.index: flops_per_token(spec.model, plan.vocab_size, s.seq_len) for s in plan.stages}
        stage = plan.stage_at(p.tokens)
        interval = self.new_interval()
        grad_norm: torch.Tensor | None = None
        steps_here = 0
        reason: EndReason = "finished"
        signal_name: str | None = None
        while p.step < plan.total_steps:
            if self.max_steps is not None and steps_here >= self.max_steps:
                reason = "stopped"
                self.log("info", f"--max-steps {self.max_steps}: stopping at step {p.step}")
                break
            now_stage = plan.stage_at(p.tokens)
            if now_stage.index != stage.index:
                stage = now_stage
                self.emit("stage", index=stage.index, seq_len=stage.seq_len, mix=stage.mix)
                self.emit_mixture()
            tokens_before = p.tokens
            loss, grad_norm = self.train_step(stage)
            p.step += 1
            self.compiles.note(f"at step {p.step} (stage {stage.index}, seq_len {stage.seq_len})")
            p.tokens += plan.batch_tokens
            if self.mixture_moved:
                self.mixture_moved = False
                self.emit_mixture()
            steps_here += 1
            interval.steps += 1
            if self.routing is not None:
                interval.load = self.routing.load if interval.load is None else interval.load + self.routing.load
                interval.balance = self.routing.balance_loss if interval.balance is None else interval.balance + self.routing.balance_loss
            if bool(torch.isfinite(grad_norm)):  # the engine has synced for this already
                interval.loss_sum += loss
                interval.applied += 1
                self.skips_in_a_row = 0
                if self.rollbacks and p.step > self.failed_step:
                    self.rollbacks = 0
            else:
                self.failed_step = p.step
                if spec.train.on_nonfinite != "skip":  # the run stops or goes back: its refused step in the record first
                    interval = self.log_train(interval, grad_norm, stage)
                if self.on_nonfinite(loss) == "stop":
                    self.log_train(interval, grad_norm, stage)  # skip: the steps it skipped in a row
                    return Outcome("failed", p.step, p.tokens, error=self.stop_error, checkpoint=self.last_good_checkpoint(),
                                   best_val_loss=p.best_val_loss)
            # the first step of a session, every log_every steps, and (one process) every log_seconds
            if (p.step % log_every == 0 or p.step == plan.total_steps or steps_here == 1
                    or (log_seconds is not None and time.perf_counter() - interval.started >= log_seconds)):
                interval = self.log_train(interval, grad_norm, stage)
            flags = 0
            if p.step % self.control_every == 0:
                local = self.control.poll() | (ctl.STOP if signals.received is not None else 0)
                for warning in self.control.take_warnings():
                    self.log("warning", warning)
                flags = engine.sync_flags(local)
            pause_start = time.perf_counter()
            last = p.step == plan.total_steps  # evaluate before the final checkpoint, so it records val_loss
            if (every_eval and crossed(tokens_before, p.tokens, every_eval)) or flags & ctl.EVAL or (last and every_eval):
                if spec.train.eval:
                    self.evaluate()
                else:
                    self.log("warning", "evaluation requested, but train.eval is null: the spec has no evaluation")
            if crossed(tokens_before, p.tokens, every_ckpt) or flags & ctl.CHECKPOINT:
                self.checkpoint()
                if self.stop_error is not None:  # the disk refused it and on_write_error says stop
                    return Outcome("failed", p.step, p.tokens, error=self.stop_error, checkpoint=self.last_good_checkpoint(),
                                   best_val_loss=p.best_val_loss)
            self.control.done(flags)
            interval.paused += time.perf_counter() - pause_start
            if flags & ctl.STOP:
                reason = "stopped"
                signal_name = signals.name
                self.log("info", f"{signal_name or 'stop requested'}: stopping at step {p.step} with a checkpoint")
                break
        if reason == "stopped":  # a stop mid-interval: its steps still get their train event
            self.log_train(interval, grad_norm, stage)
        if reason == "finished" and spec.train.eval and p.val_step != p.step:
            self.evaluate()
        path = self.checkpoint()
        if path is None:  # the disk refused the last checkpoint: what this session trained is not saved
            return Outcome("failed", p.step, p.tokens, error=f"{self.write_error}; the steps since the last checkpoint written are not saved",
                           checkpoint=self.last_good_checkpoint(), signal=signal_name, best_val_loss=p.best_val_loss)
        return Outcome(reason, p.step, p.tokens, checkpoint=path, signal=signal_name, best_val_loss=p.best_val_loss)

    def new_interval(self) -> Interval:
        return Interval(torch.zeros((), device=self.engine.device))

    def log_train(self, interval: Interval, grad_norm: torch.Tensor | None, stage: StagePlan) -> Interval:
        """Write the train event of `interval` (none when it has no steps) and return a new interval: the
        mean loss of the steps whose update was applied (null when none was), `skipped` the others."""
        if not interval.steps:
            return interval
        steps, applied = interval.steps, interval.applied
        # the one host read of the interval; every rank skipped the same steps, so all call the collective or none
        loss = float(self.engine.reduce_mean(interval.loss_sum / applied)) if applied else None
        # timed after the read, which waits for the device work still queued (a GPU's last optimizer update)
        elapsed = time.perf_counter() - interval.started - interval.paused
        flops_per_tok = self.flops[stage.index]
        tokens_per_s = steps * self.plan.batch_tokens / max(elapsed, 1e-9)
        achieved = tokens_per_s * flops_per_tok / self.processes
        if self.peak and achieved > self.peak and self.engine.device.type == "cpu":
            # the start-up measurement met a busy CPU: measure again, keep the best seen
            self.peak = max(self.peak, measure_cpu_peak())
        mfu = achieved / self.peak if self.peak and achieved <= self.peak else None  # None: no trustworthy peak
        self.emit(
            "train",
            loss=loss,
            lr=self.lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
            tokens_per_s=tokens_per_s,
            step_time=elapsed / steps,
            mfu=mfu,
            memory=memory_in_use(self.engine.device),
            stage=stage.index,
            skipped=steps - applied,
        )
        if interval.load is not None and interval.balance is not None:
            load = interval.load / steps  # (layers, experts): each expert's share of the assignments
            experts = tuple(router.spec.n_experts for router in self.routers)
            self.emit("routing", balance_loss=float(interval.balance.mean()) / steps, imbalance=float(imbalance(load, experts).mean()), load=[[round(x, 5) for x in row] for row in load.tolist()])
        return self.new_interval()


def train(spec: Spec, plan: Plan, engine: Engine, run: RunDir, prepared: PreparedData, *, spec_hash: str,
          max_steps: int | None = None, resume_from: Path | None = None, console: Listener | None = None,
          parameters: int | None = None) -> Outcome:
    """Train `engine.model` as `spec` and `plan` say, recording into the run folder `run` (a RunDir).

    Every rank calls this. `resume_from`: a checkpoint folder to continue from exactly. `max_steps`:
    stop (with a checkpoint) after this many steps of this call. `console`: an event listener (rank 0).
    Returns the Outcome; the `end` event is written whatever happens."""
    trainer = Trainer(spec, plan, engine, run, prepared, spec_hash=spec_hash, max_steps=max_steps, console=console)
    # Before the tracker's thread starts: a CPU's peak is timed in Python between matmuls, and a thread
    # busy opening the Aim repository holds the GIL for milliseconds (measured 63 GFLOP/s a thread with
    # it, 95 without, and MFU read 85-96% where 60% was true).
    trainer.peak, _ = peak_flops(engine.device, engine.precision)
    if engine.is_main:
        try:
            trainer.tracker = make_tracker(spec, run, spec_hash, warn=lambda message: trainer.log("warning", message))
        except Exception as error:  # Aim is a convenience: the run goes on without it
            trainer.log("warning", f"Aim tracking is off for this run: {error}")
        if trainer.tracker is not None:
            trainer.events.listeners.append(trainer.tracker)
        try:
            trainer.tensorboard = make_tensorboard(spec, run, warn=lambda message: trainer.log("warning", message))
        except Exception as error:  # a convenience too
            trainer.log("warning", f"TensorBoard tracking is off for this run: {error}")
        if trainer.tensorboard is not None:
            trainer.events.listeners.append(trainer.tensorboard)
    parameters = parameters if parameters is not None else sum(p.numel() for p in engine.model.parameters())
    with StopSignals() as signals:
        try:
            if resume_from is not None:
                trainer.restore(Path(resume_from))
            else:
                seed_everything(spec.seed)
            stale = trainer.control.clear()  # before the start event: the dashboard sends nothing earlier
            trainer.start_event(resume_from, parameters)
            trainer.emit_mixture()
            if stale:
                trainer.log("warning", f"ignored the {' and '.join(stale)} request left in control/ by an earlier session")
            for warning in trainer.control.take_warnings():
                trainer.log("warning", warning)
            if spec.train.on_nonfinite == "rollback" and trainer.last_good_checkpoint() is None:
                trainer.checkpoint()  # something to roll back to before the first interval's checkpoint
            outcome = trainer.loop(signals)
        except KeyboardInterrupt:
            p = trainer.progress
            outcome = Outcome("stopped", p.step, p.tokens, error="interrupted twice: the last steps have no checkpoint",
                              checkpoint=trainer.last_good_checkpoint(), signal="SIGINT")
        except Exception as error:
            p = trainer.progress
            if is_oom(error):
                stage = plan.stage_at(p.tokens)
                message = oom_message(error, micro_batch=stage.micro_batch, seq_len=stage.seq_len,
                                      spec_path=str(spec.source_path) if spec.source_path else None)
            elif isinstance(error, (DataError, CheckpointError)):  # bad input or a refused disk: its message says it all
                message = str(error)
            else:  # a bug or a fault nobody planned for: one line here, the traceback in error.log
                log = run.append_error_log(traceback.format_exc()) if engine.is_main else None
                message = f"{type(error).__name__}: {error}" + (f" (traceback in {log})" if log else "")
            outcome = Outcome("failed", p.step, p.tokens, error=message, checkpoint=trainer.last_good_checkpoint(),
                              best_val_loss=p.best_val_loss)
        trainer.compiles.close()
        trainer.sampler.close()  # the stream loaders' workers
        trainer.emit("end", reason=outcome.reason, error=outcome.error)
        if trainer.tracker is not None:
            trainer.tracker.close()
        if trainer.tensorboard is not None:
            trainer.tensorboard.close()
        trainer.events.close()
    return outcome
