"""The run plan: the training quantities a spec implies, derived in one place.

`make_plan(spec)` resolves precision and world size, the token budget and warmup, and for each
curriculum stage its sequence length, mixture, micro-batch, gradient accumulation and steps.
Nothing here is written back into the spec: `tabula plan` shows these numbers, the runtime runs
them.

Stage steps follow the token boundaries exactly as a token-driven loop meets them: step s (which
starts after s x batch_tokens tokens) belongs to the stage whose [start_tokens, end_tokens)
contains s x batch_tokens, so a stage has ceil(end / batch_tokens) - ceil(start / batch_tokens)
steps (ceil(stage tokens / batch_tokens) when boundaries are multiples of batch_tokens), and the
total is ceil(budget / batch_tokens).

The plan also decides whether the model compiles (`Plan.compile`, compiler/compile_plan.py): from the
steps at each shape, the device type and whether the persistent compile cache is warm for this model.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabula.schemas.spec import Spec

from .activations import activation_bytes
from .compile_plan import CompileDecision, decide_compile
from .estimate import DEVICE_MEMORY, count_parameters, model_state_bytes

# A problem found while planning: (spec path, message, expected, found), made a SpecError by _errors.
Problem = tuple[tuple[Any, ...], str, "str | None", "str | None"]

USABLE_MEMORY = 0.85  # head-room for the allocator's fragmentation, kernels' workspaces, buffers


@dataclass(frozen=True)
class StagePlan:
    """One curriculum stage as it runs: tokens [start_tokens, end_tokens) of the budget."""

    index: int
    start_tokens: int
    end_tokens: int
    seq_len: int
    mix: dict[str, float]  # normalised sampling weights by source name
    sequences_per_step: int  # over all ranks
    micro_batch: int  # sequences per rank per forward pass
    grad_accum: int  # micro-batches per rank per optimizer step
    steps: int

    @property
    def tokens(self) -> int:
        return self.end_tokens - self.start_tokens


@dataclass(frozen=True)
class Plan:
    """The derived training quantities of a spec (see the module docstring)."""

    precision: str  # fp32 | bf16 | fp16 (auto resolved for the device)
    world_size: int
    vocab_size: int
    budget_tokens: int
    batch_tokens: int
    warmup_tokens: int
    stages: tuple[StagePlan, ...]
    total_steps: int
    eval_every_tokens: int | None
    checkpoint_every_tokens: int | None
    compile: CompileDecision  # whether the training model is compiled, and why
    device_type: str = "cpu"
    notes: tuple[str, ...] = field(default=())

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_tokens / self.batch_tokens)

    @property
    def total_tokens(self) -> int:
        """Tokens actually trained: whole optimizer steps, so at least the budget."""
        return self.total_steps * self.batch_tokens

    def stage_at(self, tokens: int) -> StagePlan:
        """The stage a step that starts after `tokens` training tokens belongs to."""
        for stage in self.stages:
            if tokens < stage.end_tokens:
                return stage
        return self.stages[-1]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, derived properties included."""
        return {**asdict(self), "warmup_steps": self.warmup_steps, "total_tokens": self.total_tokens}


def local_device_type() -> str:
    """"cuda" where this machine has a CUDA (or ROCm) GPU torch can use, else "cpu". Looks for a GPU
    driver first: importing torch only to ask costs seconds."""
    drivers = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/kfd")
    if not any(Path(p).exists() for p in drivers) and not shutil.which("nvidia-smi"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_plan(
    spec: Spec,
    *,
    world_size: int | None = None,
    vocab_size: int | None = None,
    device_type: str = "cpu",
    device_memory: int | None = None,
    compile_cache: str | Path | None = None,
    max_steps: int | None = None,
) -> Plan:
    """The plan for training `spec` on `world_size` ranks (default: parallel.world_size) of
    `device_type` ("cuda", "cpu"...). `vocab_size` is the loaded tokenizer's size where known; a
    number in model.vocab_size wins over it (it may pad the tokenizer's), auto takes it (or what
    the spec alone tells: a trained tokenizer's size, a known tiktoken encoding's). `device_memory` (bytes per rank) bounds the automatic micro-batch (default
    DEVICE_MEMORY). `compile_cache`: the tabula cache folder (its compile part tells whether this model
    compiled before: a warm cache); None counts as cold. `max_steps`: the steps this session stops after,
    when fewer than the plan's (the compile decision weighs only those). Raises SpecErrors, with the spec
    path, for combinations that cannot run. Under tensor parallelism (fsdp backend, parallel.tensor.size)
    the ranks of one tensor group share their sequences: the plan's `world_size` is the data-parallel
    ranks, `world_size / parallel.tensor.size`."""
    world = world_size or spec.parallel.world_size
    if spec.parallel.backend == "fsdp" and spec.parallel.tensor.size > 1:
        world = max(1, world // spec.parallel.tensor.size)
    pipe = spec.parallel.pipeline
    if pipe.stages > 1:  # the ranks of one pipeline share their sequences: data-parallel ranks only
        world = max(1, world // pipe.stages)
    notes: list[str] = []
    vocab = _vocab_size(spec, vocab_size)
    precision = _precision(spec, device_type, notes)
    if any(block.attention_backend == "flex" for block in spec.model.layer_blocks) and device_type in ("cpu", "mps"):
        notes.append(f"attention backend flex: FlexAttention has no backward on the {device_type} (torch 2.13): training computes "
                     "the same pattern with the dense mask; evaluation and sampling run FlexAttention eagerly, several times slower "
                     "than the dense mask there (7x at 2048 tokens, bench/bench_flex.py): sdpa suits CPU runs")
    budget = _budget(spec, vocab)
    train = spec.train
    batch = train.batch_tokens
    warmup = round(train.schedule.warmup * budget)

    memory = device_memory or DEVICE_MEMORY.get(device_type, DEVICE_MEMORY["cpu"])
    states, _ = model_state_bytes(spec, vocab, precision, world)
    free = int(memory * USABLE_MEMORY) - sum(states.values())
    if free <= 0:
        notes.append(
            f"weights, gradients and optimizer state need {_gib(sum(states.values()))} per rank, more than the "
            f"{_gib(memory)} assumed: use ZeRO (parallel.zero.stage), offload or more ranks"
        )

    spans = _spans(spec, budget, notes)
    errors = _indivisible(spec, world, [seq_len for _, _, _, seq_len, _ in spans]) + _finetune_refusals(spec, device_type)
    errors += _kernel_refusals(spec, device_type)
    if errors:
        raise _errors(spec, errors)
    stages = []
    for index, start, end, seq_len, mix in spans:
        planned = _stage(spec, index, start, end, seq_len, mix, world, precision, vocab, free, errors, notes)
        if planned is not None:
            stages.append(planned)
            if planned.steps == 0:
                notes.append(f"curriculum stage {index} is shorter than one batch ({batch} tokens): it runs no step")
    if pipe.stages > 1:
        errors += [(("parallel", "pipeline", "micro_batches"),
                    f"micro_batches ({pipe.micro_batches}) must equal curriculum stage {s.index}'s gradient accumulation "
                    f"steps ({s.grad_accum}: sequences per rank / train.micro_batch)", str(s.grad_accum), str(pipe.micro_batches))
                   for s in stages if s.grad_accum != pipe.micro_batches][:1]
        if spec.data.packing.document_masking:
            errors.append((("data", "packing", "document_masking"), "document masking is not lowered to pipeline stages "
                           "(they pass one activation tensor): set it false, or train without parallel.pipeline", "false", "true"))
    if errors:
        raise _errors(spec, errors)
    total = sum(stage.steps for stage in stages)
    return Plan(
        precision=precision,
        world_size=world,
        vocab_size=vocab,
        budget_tokens=budget,
        batch_tokens=batch,
        warmup_tokens=warmup,
        stages=tuple(stages),
        total_steps=total,
        eval_every_tokens=train.eval.every_tokens if train.eval else None,
        checkpoint_every_tokens=train.checkpoint.every_tokens,
        compile=decide_compile(spec, tuple(stages), vocab_size=vocab, precision=precision, device_type=device_type,
                               world_size=world, cache_root=compile_cache, max_steps=max_steps),
        device_type=device_type,
        notes=tuple(notes),
    )


def _finetune_refusals(spec: Spec, device_type: str) -> list[Problem]:
    """QLoRA's 4-bit base needs bitsandbytes on a CUDA GPU, in one process (its 4-bit weights are not
    ZeRO's to partition): elsewhere it is refused before anything runs."""
    finetune = spec.train.finetune
    if finetune is None or finetune.kind != "qlora":
        return []
    path = ("train", "finetune", "kind")
    if device_type != "cuda":
        return [(path, f"qlora holds the base in 4 bits with bitsandbytes, which needs a CUDA GPU; this plan is for {device_type} "
                       "(kind: lora trains the same adapters over the full-precision base)", "lora, dora (or a CUDA GPU)", "qlora")]
    if spec.parallel.backend == "deepspeed":
        return [(path, "qlora runs on the local engine (parallel.backend: local): DeepSpeed does not partition 4-bit weights",
                 "parallel.backend: local", "deepspeed")]
    return []


def _kernel_refusals(spec: Spec, device_type: str) -> list[Problem]:
    """model.kernels choices that cannot run here: Liger Kernel off CUDA; a fused loss under ZeRO-3, which
    gathers the output head's weight only around the head's own forward (the fused loss reads it directly)."""
    kernels = spec.model.kernels
    problems: list[Problem] = [(("model", "kernels", name), message, "a CUDA GPU", "liger")
                               for name, message in kernels.device_problems(device_type)]
    if kernels.cross_entropy != "standard" and spec.parallel.backend == "deepspeed" and spec.parallel.zero.stage == 3:
        problems.append((("model", "kernels", "cross_entropy"), f"{kernels.cross_entropy} cross-entropy reads the output head's weight "
                         "outside the head's forward, where ZeRO-3 has not gathered it: use standard, or ZeRO stage 2 or below",
                         "standard (or zero.stage <= 2)", kernels.cross_entropy))
    return problems


def _vocab_size(spec: Spec, tokenizer_size: int | None) -> int:
    declared = spec.model.vocab_size
    if isinstance(declared, int):
        if tokenizer_size is not None and tokenizer_size > declared:
            raise _errors(spec, [(("model", "vocab_size"), f"model.vocab_size ({declared}) is smaller than the tokenizer's vocabulary "
                                  f"({tokenizer_size}): some token ids would have no embedding", f"at least {tokenizer_size}", str(declared))])
        return declared
    vocab = tokenizer_size or spec.vocab_size
    if vocab is None:
        raise _errors(spec, [(("model", "vocab_size"), "the vocabulary size is unknown until the tokenizer is loaded: set model.vocab_size to plan this spec", "an integer", "auto")])
    return vocab


def _precision(spec: Spec, device_type: str, notes: list[str]) -> str:
    asked = spec.parallel.precision
    if asked == "auto":
        # bf16 where the device has fast bf16 units (CUDA GPUs); CPUs compute it 50-100x slower.
        return "bf16" if device_type == "cuda" else "fp32"
    if asked in ("bf16", "fp16") and device_type == "cpu":
        notes.append(f"precision {asked} on a CPU: most CPUs compute it far slower than fp32 (precision: auto picks fp32)")
    return asked


def _budget(spec: Spec, vocab: int) -> int:
    budget = spec.train.budget
    if budget.tokens is not None:
        return budget.tokens
    assert budget.tokens_per_param is not None  # exactly one is given (Budget._exactly_one)
    return math.ceil(budget.tokens_per_param * count_parameters(spec.model, vocab).total)


def _spans(spec: Spec, budget: int, notes: list[str]) -> list[tuple[int, int, int, int, dict[str, float]]]:
    """(index, start_tokens, end_tokens, seq_len, mix) of the stages that run within the budget:
    seq_len and mix carry over, the first defaults to max_seq_len and equal weights, the last
    runs until the budget, stages past the budget are dropped."""
    spans, start = [], 0
    curriculum = spec.data.curriculum
    seq_len, mix = spec.model.max_seq_len, {name: 1.0 for name in spec.data.sources}
    for index, stage in enumerate(curriculum):
        seq_len = stage.seq_len or seq_len
        mix = stage.mix or mix
        if start >= budget:
            notes.append(f"curriculum stage {index} starts at {start} tokens, after the budget of {budget}: dropped")
            continue
        last = index == len(curriculum) - 1
        end = budget if last or stage.until_tokens is None else min(stage.until_tokens, budget)
        if last and stage.until_tokens is not None and stage.until_tokens != budget:
            notes.append(f"the last curriculum stage lasts until the budget ({budget} tokens), not until_tokens {stage.until_tokens}")
        elif not last and stage.until_tokens is not None and stage.until_tokens > budget:
            notes.append(f"curriculum stage {index} is cut at the budget ({budget} tokens) instead of {stage.until_tokens}")
        spans.append((index, start, end, seq_len, mix))
        start = end
    return spans


def _stage(spec: Spec, index: int, start: int, end: int, seq_len: int, mix: dict[str, float], world: int, precision: str,
           vocab: int, free: int, errors: list[Problem], notes: list[str]) -> StagePlan | None:
    batch = spec.train.batch_tokens
    sequences = batch // seq_len
    per_rank = sequences // world
    asked = spec.train.micro_batch
    if asked == "auto":
        micro = _auto_micro_batch(spec, per_rank, seq_len, precision, vocab, free)
        one = activation_bytes(spec.model, vocab, 1, seq_len, precision, spec.parallel.activation_checkpointing,
                               spec.parallel.checkpoint_every_n, autocast=spec.parallel.backend == "local")
        if one > free > 0:
            notes.append(f"curriculum stage {index}: the activations of one sequence of {seq_len} tokens ({_gib(one)}) "
                         f"exceed the memory left per rank ({_gib(free)}): set parallel.activation_checkpointing: full")
    elif per_rank % asked:
        errors.append((
            ("train", "micro_batch"),
            f"micro_batch ({asked}) must divide the sequences per rank per step of curriculum stage {index} "
            f"(batch_tokens / seq_len / world_size = {batch} / {seq_len} / {world} = {per_rank})",
            f"a divisor of {per_rank}",
            str(asked),
        ))
        return None
    else:
        micro = asked
    total = sum(mix.values())
    steps = math.ceil(end / batch) - math.ceil(start / batch)
    return StagePlan(
        index=index,
        start_tokens=start,
        end_tokens=end,
        seq_len=seq_len,
        mix={name: weight / total for name, weight in mix.items()},
        sequences_per_step=sequences,
        micro_batch=micro,
        grad_accum=per_rank // micro,
        steps=steps,
    )


def _indivisible(spec: Spec, world: int, seq_lens: list[int]) -> list[Problem]:
    """One error at train.batch_tokens when it is not a multiple of seq_len x world_size for
    some stage, naming those stages' products and the smallest batch that fits them all."""
    batch = spec.train.batch_tokens
    bad = sorted({n * world for n in seq_lens if batch % (n * world)})
    if not bad:
        return []
    fits = math.lcm(*(n * world for n in seq_lens))
    shown = " and ".join(f"{n // world} x {world} = {n}" for n in bad)
    return [(
        ("train", "batch_tokens"),
        f"batch_tokens ({batch}) must be a multiple of seq_len x world_size ({shown}); "
        f"the nearest that fits every curriculum stage is {max(fits, round(batch / fits) * fits)}",
        f"a multiple of {fits}",
        str(batch),
    )]


def _auto_micro_batch(spec: Spec, per_rank: int, seq_len: int, precision: str, vocab: int, free: int) -> int:
    """The largest divisor of `per_rank` whose activations fit in `free` bytes (at least 1)."""
    parallel = spec.parallel
    for micro in reversed(_divisors(per_rank)):
        needed = activation_bytes(spec.model, vocab, micro, seq_len, precision, parallel.activation_checkpointing,
                                  parallel.checkpoint_every_n, autocast=parallel.backend == "local")
        if needed <= free:
            return micro
    return 1


def _divisors(n: int) -> list[int]:
    """Every divisor of n in increasing order, found in O(sqrt(n)) steps (n can be 2**33)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small) | {n // d for d in small})


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _errors(spec: Spec, problems: list[Problem]) -> Exception:
    """SpecErrors for (path, message, expected, found) problems, at the file positions the loader
    recorded for those paths (none for specs built in code)."""
    from tabula.schemas.errors import SpecErrors
    from tabula.schemas.loader import error_at

    return SpecErrors(error_at(spec, tuple(path), message, expected=expected, found=found) for path, message, expected, found in problems)
