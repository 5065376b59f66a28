"""Show what a spec will cost before it runs: parameters, FLOPs per token, memory per rank by part,
activations, the curriculum stages with their sequence length, mixture, micro-batch, gradient
accumulation and steps, warmup, totals, and the time at a stated peak FLOP/s and MFU.

Nothing is built or downloaded: the numbers are arithmetic over the spec, so a 1.3B model is
planned in a moment on a laptop. The device decides the precision `auto` resolves to and the
memory the automatic micro-batch may fill: by default this machine's (a CUDA GPU if present, else
the CPU); `--device cuda` plans for an 80 GB GPU from anywhere.

It also says whether the run will compile the model (`model.compile.enabled: auto` weighs the steps
at each shape against the compile's estimated cost, cold or warm from the persistent compile cache,
and its saving per step) and why.

  tabula plan specs/tabulaprima-278m.yaml
  tabula plan specs/quickstart.yaml train.batch_tokens=32k --json
  tabula plan specs/zero2.yaml --deepspeed-config > ds_config.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tabula.schemas.units import format_bytes, format_count, format_duration

HELP = "show parameters, FLOPs, memory per rank, steps and time a spec implies (nothing is built)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tabula.report import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--world-size", type=int, metavar="N", help="ranks to plan for (default: parallel.world_size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="device the plan is for (default auto: cuda where a CUDA GPU is present, else cpu)")
    parser.add_argument("--peak-tflops", type=float, metavar="X",
                        help="peak TFLOP/s per rank for the time estimate (default: 989 bf16 / 67 fp32 on cuda, an H100; 0.1 on cpu)")
    parser.add_argument("--mfu", type=float, default=None, metavar="F", help="model FLOPs utilisation assumed, 0-1 (default 0.4)")
    parser.add_argument("--measure", action="store_true",
                        help="also run two training steps on this machine's device (random tokens) and print the measured "
                             "peak memory beside the estimate (local backend)")
    parser.add_argument("--deepspeed-config", action="store_true",
                        help="print the DeepSpeed config JSON the plan lowers to (checked with DeepSpeed's own config classes)")


def run(args: argparse.Namespace) -> int:
    from tabula.compiler.estimate import DEFAULT_MFU, estimate
    from tabula.compiler.plan import make_plan
    from tabula.report import load_spec_or_report, print_errors
    from tabula.schemas.errors import SpecError, SpecErrors

    if args.world_size is not None and args.world_size < 1:
        return _bad(f"--world-size must be at least 1, found {args.world_size}")
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    if not 0 < mfu <= 1:
        return _bad(f"--mfu is a fraction in (0, 1], found {args.mfu}")
    if args.peak_tflops is not None and not 0 < args.peak_tflops < math.inf:
        return _bad(f"--peak-tflops must be a positive number, found {args.peak_tflops}")

    path = args.spec
    spec = load_spec_or_report(path, args.overrides, allow_extends_outside=args.allow_extends_outside)
    if spec is None:
        return 2
    device = _device(args.device)
    if args.world_size is not None and args.world_size > 1 and spec.parallel.backend == "local":
        print_errors([SpecError(f"--world-size {args.world_size} needs parallel.backend: deepspeed", path=("parallel", "backend"))])
        return 2
    try:
        plan = make_plan(spec, world_size=args.world_size, vocab_size=_tokenizer_file_size(spec), device_type=device,
                         compile_cache=_cache_root())
    except SpecErrors as error:
        print_errors(error.errors)
        return 2
    if args.deepspeed_config:
        return _print_deepspeed_config(spec, plan)
    peak = args.peak_tflops * 1e12 if args.peak_tflops is not None else None
    est = estimate(spec, plan, peak_flops=peak, mfu=mfu, device_type=device)
    measured = None
    if args.measure:
        if spec.parallel.backend != "local" or plan.world_size != 1:
            return _bad("--measure runs one local process: parallel.backend must be local with one rank")
        from tabula.runtime.evaluation.measure import measure_step

        measured = measure_step(spec, plan, device)
    if args.json:
        report = as_json(spec, plan, est, path)
        if measured is not None:
            report["measured"] = {**vars(measured), "estimate": est.memory_per_rank["total"],
                                  "ratio": measured_ratio(est, measured)}
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(report_lines(spec, plan, est, path)))
        if measured is not None:
            print("\n".join(measured_lines(est, measured)))
    return 0


def measured_ratio(est, measured) -> float:
    """The estimate over the measurement (above 1: the plan is cautious)."""
    return est.memory_per_rank["total"] / measured.peak_bytes if measured.peak_bytes > 0 else math.inf


def measured_lines(est, measured) -> list[str]:
    return ["", "measured (two training steps on random tokens, the second measured)",
            f"  device {measured.device}, micro-batch {measured.micro_batch} x {measured.seq_len} tokens, "
            f"{measured.step_seconds:.2f} s a step",
            f"  peak memory {format_bytes(measured.peak_bytes)} ({measured.method})",
            f"  estimate    {format_bytes(est.memory_per_rank['total'])} "
            f"({measured_ratio(est, measured):.2f}x the measurement)"]


def as_json(spec, plan, est, path: str) -> dict:
    """The plan and estimate as one JSON-able object."""
    from tabula.compiler.layer_table import layer_runs

    stages = []
    for stage, cost in zip(plan.stages, est.stages):
        stages.append({
            "index": stage.index, "start_tokens": stage.start_tokens, "end_tokens": stage.end_tokens,
            "seq_len": stage.seq_len, "mix": stage.mix, "sequences_per_step": stage.sequences_per_step,
            "micro_batch": stage.micro_batch, "grad_accum": stage.grad_accum, "steps": stage.steps,
            "flops_per_token": cost.flops_per_token, "activations": cost.activations,
        })
    return {
        "spec": path,
        "name": spec.name,
        "spec_hash": _spec_hash(spec),
        "device": plan.device_type,
        "precision": plan.precision,
        "world_size": _ranks(spec, plan),
        "data_parallel": plan.world_size,
        "tensor_parallel": _tensor(spec),
        "pipeline": _pipeline_json(spec, plan),
        "backend": spec.parallel.backend,
        "vocab_size": plan.vocab_size,
        "parameters": vars(est.parameters).copy(),
        "layers": [{"layers": run.span, "block": run.path, "kinds": run.summary, "parameters": run.parameters, "active_parameters": run.active}
                   for run in layer_runs(spec.model)],
        "trainable": vars(est.trainable).copy() if est.trainable else None,
        "memory_saved_by_finetune": est.memory_saved,
        "memory_saved_by_kernels": est.kernel_memory_saved,
        "flops_per_token": est.flops_per_token,
        "vision": {"summary": spec.model.vision.summary(), "parameters": est.parameters.vision,
                   "flops_per_image": est.vision_flops_per_image} if spec.model.vision is not None else None,
        "flops_per_token_seq_len": est.flops_per_token_seq_len,
        "memory_per_rank": est.memory_per_rank,
        "host_memory_per_rank": est.host_memory_per_rank,
        "activation_checkpointing": spec.parallel.activation_checkpointing,
        "stages": stages,
        "steps": {"total": plan.total_steps, "warmup": plan.warmup_steps},
        "tokens": {"budget": plan.budget_tokens, "batch": plan.batch_tokens, "warmup": plan.warmup_tokens, "total": plan.total_tokens},
        "eval_every_tokens": plan.eval_every_tokens,
        "checkpoint_every_tokens": plan.checkpoint_every_tokens,
        "time": {"seconds": est.seconds, "total_flops": est.total_flops, "peak_tflops": est.peak_flops / 1e12, "mfu": est.mfu},
        "compile": plan.compile.as_dict(),
        "notes": [*plan.notes, *est.notes],
    }


# ---------------------------------------------------------------- the readable report

MEMORY_PARTS = (("weights", "weights"), ("gradients", "gradients"), ("master_weights", "fp32 master weights"),
                ("master_gradients", "fp32 gradients"), ("optimizer_state", "optimizer state"),
                ("weight_copies", "autocast copies"), ("gathered_weights", "gathered layer"), ("activations", "activations"))


def report_lines(spec, plan, est, path: str) -> list[str]:
    """The report `tabula plan` prints, one string a line."""
    params = est.parameters
    spec_hash = _spec_hash(spec)
    lines = [
        f"{spec.name}  ({path})  spec {spec_hash[:12]}",
        f"{plan.device_type}, {plan.precision}, {_ranks(spec, plan)} rank{'s' if _ranks(spec, plan) > 1 else ''}"
        f" ({spec.parallel.backend}{_zero(spec)}), vocabulary {plan.vocab_size:,}",
        "",
        "model",
        f"  parameters         {params.total:>16,}  {_si(params.total)}",
        f"    embedding        {params.embedding:>16,}  {_si(params.embedding)}"
        + ("  (tied with the output head, counted once)" if spec.model.tie_embeddings else ""),
        f"    non-embedding    {params.non_embedding:>16,}  {_si(params.non_embedding)}",
        *([f"    active a token   {params.active:>16,}  {_si(params.active)}  (a mixture of experts runs top_k experts a token)"]
          if params.active != params.total - params.vision else []),
        *([f"    vision encoder   {params.vision:>16,}  {_si(params.vision)}  ({spec.model.vision.summary()}; "
            "tabula export writes the language model only)"] if spec.model.vision is not None else []),
        *_trainable_lines(est),
        *([f"  FLOPs per image    {est.vision_flops_per_image:>16,}  {_si(est.vision_flops_per_image)}  (encoder + projector, forward + backward)"]
          if spec.model.vision is not None else []),
        f"  FLOPs per token    {est.flops_per_token:>16,}  {_si(est.flops_per_token)}"
        f"  (6N{' (active)' if params.active != params.total - params.vision else ''} + attention at seq_len {est.flops_per_token_seq_len}, forward + backward)",
        *_layer_lines(spec.model),
        "",
        f"memory per rank ({plan.precision}, {_sharding(spec)})",
    ]
    for key, label in MEMORY_PARTS:
        size = est.memory_per_rank.get(key, 0)
        if not size and key in ("master_weights", "master_gradients", "weight_copies", "gathered_weights") and key not in est.host_memory_per_rank:
            continue  # parts that exist only for some precisions and stages
        where = "  (offloaded to host)" if key in est.host_memory_per_rank else ""
        lines.append(f"  {label:<19}{_bytes(size):>16}{where}")
    lines.append(f"  {'total':<19}{_bytes(est.memory_per_rank['total']):>16}")
    if spec.train.finetune is not None:
        lines.append(f"  {'saved by ' + spec.train.finetune.kind:<19}{_bytes(est.memory_saved):>16}"
                     "  (against training every parameter: no gradients and no optimizer state for frozen weights)")
    if est.kernel_memory_saved:
        lines.append(f"  {'saved by ' + spec.model.kernels.cross_entropy + ' CE':<19}{_bytes(est.kernel_memory_saved):>16}"
                     "  (activations, against the full logits: model.kernels.cross_entropy)")
    if est.host_memory_per_rank:
        lines.append(f"  {'host (offloaded)':<19}{_bytes(est.host_memory_per_rank['total']):>16}")
    lines += _pipeline_lines(spec, plan)
    policy = spec.parallel.activation_checkpointing
    lines += ["", f"activations per micro-batch (checkpointing: {policy})"]
    for stage, cost in zip(plan.stages, est.stages):
        acts = cost.activations
        lines.append(f"  stage {stage.index}: {stage.micro_batch} x {stage.seq_len} tokens   "
                     f"none {_bytes(acts['none'])}   full {_bytes(acts['full'])}")
    lines += ["", "stages", "  #   tokens                  seq_len  micro x accum x ranks   steps        mix"]
    for stage in plan.stages:
        tokens = f"{_tokens(stage.start_tokens)} - {_tokens(stage.end_tokens)}"
        batch = f"{stage.micro_batch} x {stage.grad_accum} x {plan.world_size}"
        mix = ", ".join(f"{name} {weight:.0%}" for name, weight in stage.mix.items())
        lines.append(f"  {stage.index:<3} {tokens:<23} {stage.seq_len:>7}  {batch:<21} {stage.steps:>7,}      {mix}")
    budget = spec.train.budget
    per_param = f" ({budget.tokens_per_param:g} tokens a parameter)" if budget.tokens_per_param else ""
    lines += [
        "",
        "totals",
        f"  budget             {plan.budget_tokens:>16,} tokens{per_param}",
        f"  batch              {plan.batch_tokens:>16,} tokens a step",
        f"  steps              {plan.total_steps:>16,}  ({plan.total_tokens:,} tokens trained)",
        f"  warmup             {plan.warmup_steps:>16,} steps  ({plan.warmup_tokens:,} tokens)",
    ]
    if plan.eval_every_tokens:
        lines.append(f"  evaluation every   {plan.eval_every_tokens:>16,} tokens  ({plan.total_tokens // plan.eval_every_tokens} times)")
    if plan.checkpoint_every_tokens:
        lines.append(f"  checkpoint every   {plan.checkpoint_every_tokens:>16,} tokens")
    lines += [
        f"  compute            {est.total_flops:>16.3g} FLOPs",
        f"  time               {format_duration(est.seconds):>16}  at {est.peak_flops / 1e12:g} TFLOP/s peak x {est.mfu:g} MFU"
        f" x {_ranks(spec, plan)} rank{'s' if _ranks(spec, plan) > 1 else ''}",
    ]
    lines += ["", *compile_lines(plan.compile)]
    notes = [*plan.notes, *est.notes, *plan.compile.notes]
    if plan.device_type == "cpu" and est.seconds > 86400:
        notes.append("planned for a CPU: `--device cuda` plans the same spec for a GPU (bf16 where precision is auto)")
    if notes:
        lines += ["", "notes"] + [f"  {note}" for note in notes]
    return lines


def _layer_lines(model) -> list[str]:
    """The layers, a run of equal consecutive layers a line (one line when every layer is model.block)."""
    from tabula.compiler.layer_table import layer_runs

    runs = layer_runs(model)
    lines = [f"  layers             {model.n_layers:>16,}  (block: where each layer's spec is; parameters per layer)"]
    for run in runs:
        active = f" ({_si(run.active)} active)" if run.active != run.parameters else ""
        lines.append(f"    {run.span:<9} {run.path:<22} {run.summary:<34} {run.parameters:>12,}{active}")
    return lines


def compile_lines(decision) -> list[str]:
    """The report's compile section: the decision, why, and the estimate behind it."""
    shapes = "dynamic shapes" if decision.dynamic_shapes else "a graph a shape"
    lines = [f"compile ({decision.asked}): {'yes' if decision.enabled else 'no, eager'}",
             f"  why                {decision.reason}",
             f"  how                scope {decision.scope}, mode {decision.mode}, {shapes}; evaluation "
             f"{'compiled' if decision.evaluation else 'eager'}, sampling eager"]
    if decision.cache != "none":
        lines.append(f"  cache              {decision.cache}  ({decision.cache_dir})")
    if decision.compile_seconds is not None:
        lines.append(f"  estimate           compile ~{decision.compile_seconds:g} s, saves ~{decision.step_saving_seconds:.3g} s a step"
                     f", ~{decision.saving_seconds:g} s over {decision.steps} steps")
    return lines


def _cache_root():
    """The tabula cache folder (token and compile caches), as runs find it."""
    from tabula.runtime.data.cache import cache_root

    return cache_root()


def _trainable_lines(est) -> list[str]:
    """What a fine-tuning method trains: nothing to say without one."""
    trained = est.trainable
    if trained is None or trained.method is None:
        return []
    share = trained.trainable / max(trained.trainable + trained.frozen, 1)
    lines = [f"  trainable ({trained.method})".ljust(21) + f"{trained.trainable:>16,}  {_si(trained.trainable)}  ({share:.2%} of the model)",
             f"    frozen           {trained.frozen:>16,}  {_si(trained.frozen)}"]
    if trained.added:
        lines.append(f"    added by {trained.method:<8}{trained.added:>16,}  {_si(trained.added)}  (adapters, virtual tokens; in the trainable)")
    return lines


def _tensor(spec) -> int:
    """Ranks that share one data-parallel rank: tensor-parallel ranks (fsdp) or pipeline stages (deepspeed)."""
    if spec.parallel.backend == "fsdp":
        return spec.parallel.tensor.size
    return spec.parallel.pipeline.stages if spec.parallel.backend == "deepspeed" else 1


def _stages(spec, plan):
    """The pipeline's stages (compiler/pipeline_plan.py) at the first curriculum stage's seq_len, or None."""
    if spec.parallel.pipeline.stages <= 1:
        return None
    from tabula.compiler.pipeline_plan import plan_pipeline

    return plan_pipeline(spec, plan.vocab_size, plan.stages[0].seq_len, plan.precision, _ranks(spec, plan))


def _pipeline_json(spec, plan) -> dict | None:
    pipe = _stages(spec, plan)
    if pipe is None:
        return None
    return {"partition": pipe.partition, "micro_batches": pipe.micro_batches, "bubble": pipe.bubble, "bounds": pipe.bounds,
            "stages": [{"index": s.index, "layers": list(s.layers), "parameters": s.parameters,
                        "flops_per_token": s.flops_per_token, "state_bytes": s.state_bytes} for s in pipe.stages]}


def _pipeline_lines(spec, plan) -> list[str]:
    pipe = _stages(spec, plan)
    if pipe is None:
        return []
    lines = ["", f"pipeline ({len(pipe.stages)} stages balanced by {pipe.partition}, {pipe.micro_batches} micro-batches"
                 f", bubble {pipe.bubble:.1%} = (stages-1)/(micro_batches+stages-1))",
             "  #   layers                      parameters      FLOPs/token   weights+grads+optimizer"]
    for stage in pipe.stages:
        names = stage.layers[0] if len(stage.layers) == 1 else f"{stage.layers[0]} .. {stage.layers[-1]}"
        lines.append(f"  {stage.index:<3} {names:<25} {stage.parameters:>13,}  {_si(stage.flops_per_token):>14}   "
                     f"{_bytes(stage.state_bytes):>12}")
    return lines


def _ranks(spec, plan) -> int:
    """Every rank: the plan's data-parallel ranks times the tensor-parallel ones."""
    return plan.world_size * _tensor(spec)


def _sharding(spec) -> str:
    parallel = spec.parallel
    if parallel.backend != "fsdp":
        return f"ZeRO stage {parallel.zero.stage}"
    how = "FSDP2, " + ("resharded after forward" if parallel.fsdp.reshard_after_forward else "kept until backward")
    if parallel.fsdp.offload:
        how += ", CPU offload"
    return how + (f", tensor parallel {parallel.tensor.size}" if parallel.tensor.size > 1 else "")


def _zero(spec) -> str:
    zero = spec.parallel.zero
    if spec.parallel.backend == "fsdp":
        tensor = spec.parallel.tensor.size
        return f": {spec.parallel.world_size // tensor} data x {tensor} tensor" if tensor > 1 else ""
    if spec.parallel.backend != "deepspeed":
        return ""
    offload = [name for name, on in (("optimizer", zero.offload_optimizer), ("params", zero.offload_params)) if on]
    return f", ZeRO-{zero.stage}" + (f" offload {'+'.join(offload)}" if offload else "")


def _si(n: float) -> str:
    return format_count(n)


def _tokens(n: int) -> str:
    """A token count as specs write them (k = 2**10, M = 2**20, B = 2**30): 512k, 2.59B."""
    return format_count(n, binary=True)


def _bytes(n: float) -> str:
    return format_bytes(n, decimals=2) if n else "-"


def _print_deepspeed_config(spec, plan) -> int:
    from tabula.compiler.deepspeed_config import deepspeed_config

    config = deepspeed_config(spec, plan)
    print(json.dumps(config, indent=2))
    if spec.parallel.backend != "deepspeed":
        sys.stderr.write("note: this spec runs with backend local; the config is what backend deepspeed would use\n")
    try:
        from tabula.runtime.deepspeed_check import check_config
    except ImportError:
        sys.stderr.write("not checked: DeepSpeed's config check is not available here\n")
        return 0
    problems = check_config(config, world_size=plan.world_size)
    if problems:
        sys.stderr.write("DeepSpeed rejects this config:\n" + "".join(f"  {p}\n" for p in problems))
        return 2
    sys.stderr.write(f"checked: DeepSpeed accepts this config at world size {plan.world_size}\n")
    return 0


def _tokenizer_file_size(spec) -> int | None:
    """The vocabulary of a `kind: file` tokenizer.json, read as JSON (its ids and added tokens,
    plus the special tokens the runtime appends where missing); None for other kinds or when the
    file cannot be read (the plan then asks for model.vocab_size)."""
    tokenizer = spec.data.tokenizer
    if tokenizer.kind != "file" or isinstance(spec.model.vocab_size, int):
        return None
    path = Path(tokenizer.path)
    path = path if path.is_absolute() else spec.base_dir / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tokens = dict(data["model"]["vocab"]) if isinstance(data["model"].get("vocab"), dict) else {}
        if isinstance(data["model"].get("vocab"), list):  # unigram: [piece, score] pairs by id
            tokens = {piece: index for index, (piece, _) in enumerate(data["model"]["vocab"])}
        tokens.update({added["content"]: added["id"] for added in data.get("added_tokens") or []})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    size = max(tokens.values(), default=-1) + 1
    return size + len({tokenizer.eos_token, tokenizer.pad_token} - tokens.keys())


def _spec_hash(spec) -> str:
    from tabula.schemas.canonical import spec_hash

    return spec_hash(spec)


def _device(choice: str) -> str:
    from tabula.compiler.plan import local_device_type

    return local_device_type() if choice == "auto" else choice


def _bad(message: str) -> int:
    sys.stderr.write(f"tabula plan: error: {message}\n")
    return 2
