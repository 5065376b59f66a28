"""Whether a run compiles, and why: `model.compile` weighed against the plan. No torch here.

`enabled: auto` compiles where the estimate says it pays: the steps the run takes at each shape,
times the share of an eager step a compiled step saves, against what compiling costs with the
persistent cache cold or warm (compiler/compile_cache.py), from the measured table of the device type
(compiler/compile_costs.py). On CUDA, which the table does not cover, auto compiles as it always did.
`true` and `false` force it; the estimate is shown either way (`tabula plan`).

What counts as a compile: the training graphs (one transformer block and the loss, forward and
backward: the blocks share one graph), one more set per structure the stages change (a sliding window
that starts to mask at a longer sequence; with `dynamic_shapes: false`, a new shape), and the no-grad
graphs evaluation needs, counted (and evaluation compiled) only where its forward passes save more
than those graphs cost. Sampling a few tokens after each evaluation always runs eagerly: its batch of
one and its growing length would each compile a graph for a few milliseconds of work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import compile_cache
from .compile_costs import COSTS, CompileCosts
from .estimate import flops_per_token

if TYPE_CHECKING:
    from tabula.schemas.spec import Spec

    from .plan import StagePlan


# auto compiles when the estimated saving exceeds the compile's cost by this factor: the estimate's error
# bar (step times measured on a shared CPU vary by 10% and more; a compile that only breaks even is no gain).
MARGIN = 1.2


@dataclass(frozen=True)
class CompileDecision:
    """The plan's answer for `model.compile`: whether the training model is compiled, why, and how."""

    enabled: bool
    reason: str  # one line: why (the asked value, the device, the estimate)
    asked: str  # "auto" | "true" | "false": model.compile.enabled as written
    scope: str  # block | model
    mode: str  # torch.compile mode actually used (reduce-overhead needs CUDA graphs: default elsewhere)
    fullgraph: bool
    dynamic_shapes: bool  # batch and sequence dimensions symbolic from the first compile
    cache: str  # warm | cold | none (no persistent cache given: counted as cold)
    cache_root: str | None = None  # the tabula cache folder holding the compile cache, or None (none given)
    cache_dir: str | None = None  # TORCHINDUCTOR_CACHE_DIR for this torch version, or None (torch's default)
    cache_key: str | None = None  # this model's entry in the compile cache
    steps: int = 0  # optimizer steps the estimate covers (this session's)
    compile_seconds: float | None = None  # estimated compile time in the cache state above
    saving_seconds: float | None = None  # estimated time the compiled steps save over `steps`
    step_saving_seconds: float | None = None  # estimated saving per step, averaged over the stages
    break_even_steps: int | None = None  # steps after which the compile has paid for itself
    evaluation: bool = False  # evaluation runs compiled too (else eager: its graphs would cost more than they save)
    notes: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        """How the run's header line says it: `compiled (warm cache)`, `eager`."""
        if not self.enabled:
            return "eager"
        return f"compiled ({self.cache} cache)" if self.cache != "none" else "compiled"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes), "summary": self.summary}


def decide_compile(spec: Spec, stages: tuple[StagePlan, ...], *, vocab_size: int, precision: str, device_type: str,
                   world_size: int = 1, cache_root: str | Path | None = None, max_steps: int | None = None) -> CompileDecision:
    """The compile decision for training `spec` in `stages` on `device_type` (see the module docstring).
    `cache_root`: the tabula cache folder holding the persistent compile cache (None: none, cold).
    `max_steps`: the steps this session stops after, when fewer than the plan's."""
    asked_value = spec.model.compile
    asked = "auto" if asked_value.enabled == "auto" else str(bool(asked_value.enabled)).lower()
    notes = []
    mode = asked_value.mode
    if device_type != "cuda" and mode == "reduce-overhead":
        mode = "default"
        notes.append(f"model.compile.mode reduce-overhead records CUDA graphs, which {device_type} has not: mode default is used")
    elif device_type != "cuda" and mode == "max-autotune":
        mode = "max-autotune-no-cudagraphs"  # what max-autotune means without CUDA graphs

    cache, cache_dir, key = "none", None, None
    root = str(cache_root) if cache_root is not None else None
    if cache_root is not None:
        key = compile_cache.model_key(spec, vocab_size=vocab_size, precision=precision, device_type=device_type)
        cache = "warm" if compile_cache.is_warm(cache_root, key) else "cold"
        cache_dir = str(compile_cache.inductor_dir(cache_root))
    counted = _session_stages(stages, max_steps)
    steps = sum(n for _, n in counted)
    base: dict[str, Any] = {"asked": asked, "scope": asked_value.scope, "mode": mode, "fullgraph": asked_value.fullgraph,
            "dynamic_shapes": asked_value.dynamic_shapes, "cache": cache, "cache_root": root, "cache_dir": cache_dir, "cache_key": key,
            "steps": steps, "notes": tuple(notes)}

    costs = COSTS.get(device_type)
    estimate: dict[str, Any] = {}
    evaluation = spec.train.eval is not None
    if costs is not None:
        warm = cache == "warm"
        seconds, saving, eval_seconds, eval_saving = _estimate(spec, stages, counted, costs, warm, vocab_size, world_size or 1)
        evaluation = evaluation and eval_saving >= MARGIN * eval_seconds
        if evaluation:
            seconds, saving = seconds + eval_seconds, saving + eval_saving
        step_saving = saving / steps if steps else 0.0
        break_even = math.ceil(seconds / step_saving) if step_saving > 0 else None
        estimate = {"compile_seconds": round(seconds, 1), "saving_seconds": round(saving, 1),
                    "step_saving_seconds": round(step_saving, 4), "break_even_steps": break_even}
        pays = saving >= MARGIN * seconds
        versus = (f"{steps} step{'s' if steps != 1 else ''} {'save' if pays else 'would save'} ~{saving:.0f} s, "
                  f"{'more than' if pays else 'too little for'} the ~{seconds:.0f} s a {'warm' if warm else 'cold'} compile costs"
                  + (f" (it pays after {break_even} steps)" if break_even else ""))
    base["evaluation"] = evaluation

    if asked != "auto":
        reason = f"model.compile.enabled: {asked}"
        if estimate:
            reason += f"; estimate: {versus}"
        return CompileDecision(enabled=asked == "true", reason=reason, **base, **estimate)
    if costs is None:
        if device_type == "cuda":
            return CompileDecision(enabled=True, reason="auto: compiles on cuda (kernel fusion pays on a GPU; "
                                   "compiler/compile_costs.py has no measured cuda row to weigh it)", **base)
        return CompileDecision(enabled=False, reason=f"auto: no measured compile costs for {device_type}: eager", **base)
    return CompileDecision(enabled=pays, reason=f"auto: {versus}", **base, **estimate)


def _estimate(spec: Spec, stages: tuple[StagePlan, ...], counted: list[tuple[StagePlan, int]], costs: CompileCosts,
              warm: bool, vocab_size: int, world_size: int) -> tuple[float, float, float, float]:
    """(compile seconds, seconds saved) of the training graphs, then of the evaluation graphs, over the
    session's steps: FLOPs over the table's eager FLOP/s give the eager time, the table's share of it is saved."""
    seconds = costs.warm_seconds if warm else costs.cold_seconds
    if spec.model.compile.scope == "model":
        seconds *= 1 + costs.layer_factor * (spec.model.n_layers - 1)
    seconds += (_graph_variants(spec, stages, spec.model.compile.dynamic_shapes) - 1) * (
        costs.shape_warm_seconds if warm else costs.shape_cold_seconds)
    saving = sum(n * costs.saving * flops_per_token(spec.model, vocab_size, stage.seq_len)
                 * stage.sequences_per_step * stage.seq_len / world_size / costs.eager_flops for stage, n in counted)
    evaluation = spec.train.eval
    if evaluation is None or not counted:
        return seconds, saving, 0.0, 0.0
    tokens = sum(n * stage.sequences_per_step * stage.seq_len for stage, n in counted)
    evaluations = tokens // evaluation.every_tokens + 1  # and one at the end
    seq_len = counted[-1][0].seq_len
    forward = flops_per_token(spec.model, vocab_size, seq_len) / 3  # the forward pass: a third of forward + backward
    eval_saving = evaluations * evaluation.tokens / world_size * forward * costs.saving / costs.eager_flops
    return seconds, saving, costs.eval_warm_seconds if warm else costs.eval_cold_seconds, eval_saving


def _session_stages(stages: tuple[StagePlan, ...], max_steps: int | None) -> list[tuple[StagePlan, int]]:
    """(stage, steps this session runs in it): all of them, or the first `max_steps`."""
    counted, left = [], max_steps if max_steps is not None else math.inf
    for stage in stages:
        n = int(min(stage.steps, left))
        if n > 0:
            counted.append((stage, n))
        left -= n
    return counted


def _graph_variants(spec: Spec, stages: tuple[StagePlan, ...], dynamic_shapes: bool) -> int:
    """How many sets of training graphs the stages need: one a structure (each layer's window or sparse pattern
    masking or not at that length), and without dynamic shapes, torch's automatic recompile for a second shape."""
    patterns = sorted({block.pattern for block in spec.model.layer_blocks}, key=repr)
    structures = {tuple(not pattern.plain(stage.seq_len) for pattern in patterns) for stage in stages if stage.steps}
    shapes = {(stage.micro_batch, stage.seq_len) for stage in stages if stage.steps}
    return max(1, len(structures)) + (0 if dynamic_shapes or len(shapes) < 2 else 1)
