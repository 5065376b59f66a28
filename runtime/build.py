"""The model a run trains and the engine around it, built in one place for every engine.

    build_base_model(spec, vocab_size, device) -> Transformer
    build_training_model(spec, plan, device) -> Transformer
    build_local_engine(spec, plan, device) -> LocalEngine
    build_deepspeed_engine(spec, plan, *, errors_dir=None) -> (DeepSpeedEngine, parameters)
    build_fsdp_engine(spec, plan, *, errors_dir=None) -> (FsdpEngine, parameters)
    build_pipeline_engine(spec, plan, *, errors_dir=None) -> (PipelineDeepSpeedEngine, parameters)

The training model is built on the meta device, materialised on `device` with the spec's seed (the
same weights on every rank), given its pretrained weights where model.init is `from` (every rank reads
them: runtime/pretrained.py): the base. Then `train.finetune` is applied (compiler/adapters.py: peft's
adapters, or frozen parameters), then activation checkpointing and compilation as the spec says, in
that order (compiler/compile.py: checkpointing before compile). Both engines take the model from
`build_training_model`, so a policy is never applied on one engine and skipped on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tabula.compiler.model import Transformer
    from tabula.compiler.plan import Plan
    from tabula.schemas.spec import Spec

    from .deepspeed_engine import DeepSpeedEngine
    from .engine import LocalEngine
    from .parallel.engine import FsdpEngine


def build_base_model(spec: Spec, vocab_size: int, device: torch.device | str) -> Transformer:
    """The spec's model on `device` before any fine-tuning method touches it, initialised with `spec.seed`
    or loaded from model.init's pretrained weights: what a fine-tuning checkpoint, which holds the trained
    parameters alone, is loaded over (runtime/checkpoint.py). Raises RunInputError where pretrained
    weights do not fit."""
    from tabula.compiler import build_model

    model = build_model(spec, vocab_size=vocab_size)
    model.materialize(device, spec.seed)
    if spec.model.init.kind == "from":
        from .pretrained import load_pretrained

        load_pretrained(model, spec)
    return model


def build_training_model(spec: Spec, plan: Plan, device: torch.device) -> Transformer:
    """The base model on `device` (build_base_model) with `train.finetune` and
    `parallel.activation_checkpointing` applied, compiled as the plan decided (`plan.compile`; compilation
    itself happens at the first forward)."""
    from tabula.compiler import apply_activation_checkpointing, apply_compile
    from tabula.compiler.adapters import apply_finetune

    from .compile_watch import use_compile_cache

    model = build_base_model(spec, plan.vocab_size, device)
    # fine-tuning: adapters (peft) or frozen parameters, over the base and before checkpointing and compile
    apply_finetune(model, spec.train.finetune, seed=spec.seed, precision=plan.precision, model_spec=spec.model)
    parallel = spec.parallel
    apply_activation_checkpointing(model, parallel.activation_checkpointing, parallel.checkpoint_every_n)
    use_compile_cache(plan.compile)  # before anything compiles: the persistent cache in the tabula cache folder
    apply_compile(model, spec.model.compile, device.type, decision=plan.compile)
    return model


def build_local_engine(spec: Spec, plan: Plan, device: torch.device) -> LocalEngine:
    """The training model and tabula's optimizer on one device, in a LocalEngine."""
    from .engine import LocalEngine
    from .optimizers import build_optimizer

    model = build_training_model(spec, plan, device)
    optimizer = build_optimizer(spec.train.optimizer, model, device)
    return LocalEngine(model, optimizer, device=device, precision=plan.precision, grad_clip=spec.train.grad_clip)


def build_deepspeed_engine(spec: Spec, plan: Plan, *, errors_dir: Path | None = None) -> tuple[DeepSpeedEngine, int]:
    """This rank's engine: the training model on the rank's device, tabula's optimizer and the DeepSpeed
    engine over them (the process group must be initialised: deepspeed_engine.init_distributed).
    `errors_dir`: the run folder's ranks/, where a failing rank leaves its error. Returns the engine and
    the model's parameter count (counted before ZeRO-3 partitions the parameters)."""
    from tabula.compiler.deepspeed_config import deepspeed_config

    from .deepspeed_engine import DeepSpeedEngine, rank_device
    from .optimizers import build_optimizer

    if spec.parallel.pipeline.stages > 1:
        return build_pipeline_engine(spec, plan, errors_dir=errors_dir)
    device = rank_device()
    model = build_training_model(spec, plan, device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(spec.train.optimizer, model, device)
    engine = DeepSpeedEngine(model, optimizer, deepspeed_config(spec, plan), device=device, precision=plan.precision)
    engine.errors_dir = errors_dir
    return engine, parameters


def build_fsdp_engine(spec: Spec, plan: Plan, *, errors_dir: Path | None = None) -> tuple[FsdpEngine, int]:
    """This rank's fsdp engine (the process group must be joined: parallel.mesh.init_process_group): the
    training model on the rank's device, split over the tensor-parallel ranks (parallel.tensor.size), then
    sharded by FSDP2 over the data-parallel ranks, and tabula's optimizer over its shards. Raises
    LaunchError for a model or policy the backend cannot run. Returns the engine and the parameter count
    (counted before sharding)."""
    import torch.distributed as dist

    from .errors import LaunchError
    from .optimizers import build_optimizer
    from .parallel.engine import FsdpEngine
    from .parallel.fsdp import FsdpPolicy, apply_fsdp, check_policy
    from .parallel.mesh import device_mesh, rank_device
    from .parallel.tensor import apply_tensor_parallel, tensor_parallel_problems

    parallel = spec.parallel
    policy = FsdpPolicy(reshard_after_forward=parallel.fsdp.reshard_after_forward, precision=plan.precision,
                        offload=parallel.fsdp.offload)
    device = rank_device()
    problem = check_policy(policy, device.type)
    if problem:
        raise LaunchError(problem)
    model = build_training_model(spec, plan, device)
    parameters = sum(p.numel() for p in model.parameters())
    mesh = device_mesh(dist.get_world_size(), parallel.tensor.size)
    if parallel.tensor.size > 1:
        problems = tensor_parallel_problems(model, parallel.tensor.size)
        if problems:
            raise LaunchError("parallel.tensor: " + "; ".join(problems))
        apply_tensor_parallel(model, mesh["tp"])
    apply_fsdp(model, mesh["dp"], policy)
    optimizer = build_optimizer(spec.train.optimizer, model, device)
    engine = FsdpEngine(model, optimizer, mesh=mesh, device=device, precision=plan.precision, grad_clip=spec.train.grad_clip)
    engine.errors_dir = errors_dir
    return engine, parameters


def build_pipeline_engine(spec: Spec, plan: Plan, *, errors_dir: Path | None = None):
    """This rank's pipeline stage (parallel.pipeline, deepspeed backend; the process group must be
    initialised): the training model on the rank's device, lowered to DeepSpeed's PipelineModule with
    the plan's stage boundaries (compiler/pipeline_plan.py), tabula's optimizer over the stage's
    parameters, DeepSpeed's pipeline engine around them. Raises LaunchError for a model the stages cannot
    run. Returns the engine and the model's parameter count."""
    from tabula.compiler.deepspeed_config import deepspeed_config
    from tabula.compiler.pipeline_plan import plan_pipeline

    from .deepspeed_engine import rank_device
    from .errors import LaunchError
    from .optimizers import build_optimizer
    from .parallel.pipeline import PipelineDeepSpeedEngine, pipeline_module

    device = rank_device()
    model = build_training_model(spec, plan, device)
    parameters = sum(p.numel() for p in model.parameters())
    stages = plan_pipeline(spec, plan.vocab_size, plan.stages[0].seq_len, plan.precision)
    try:
        module = pipeline_module(model, stages.bounds)
    except ValueError as error:
        raise LaunchError(f"parallel.pipeline: {error}") from error
    optimizer = build_optimizer(spec.train.optimizer, module, device)
    config = deepspeed_config(spec, plan)
    if spec.parallel.zero.stage == 0:
        config["gradient_clipping"] = 0.0  # the engine measures the norm over every stage and clips as the local engine does
    engine = PipelineDeepSpeedEngine(model, module, optimizer, config, device=device, precision=plan.precision,
                                     grad_clip=spec.train.grad_clip)
    engine.errors_dir = errors_dir
    return engine, parameters
