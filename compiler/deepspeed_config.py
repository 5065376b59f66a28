"""The parallel plan lowered to a DeepSpeed config: a plain dict, no deepspeed import.

tabula keeps control of what DeepSpeed would otherwise schedule itself: the learning rate follows
tabula's token-driven schedule (no `scheduler` section), activation checkpointing is applied by
`tabula.compiler.apply_activation_checkpointing` (no `activation_checkpointing` section), and the
optimizer is tabula's own (`zero_allow_untested_optimizer`). The batch keys are those of the
plan's first curriculum stage; a stage with another seq_len changes the sequences a step, which
the runtime hands to the engine when the stage begins.
"""

from __future__ import annotations

from typing import Any

from tabula.schemas.spec import Spec

from .plan import Plan

# DeepSpeed prints a line every steps_per_print steps; tabula's events and dashboard report progress.
QUIET_STEPS = 2**31 - 1


def deepspeed_config(spec: Spec, plan: Plan) -> dict[str, Any]:
    """The DeepSpeed config dict for training `spec` as `plan` says (ZeRO stage and offload,
    precision, batch keys, gradient clipping)."""
    zero = spec.parallel.zero
    first = plan.stages[0]
    zero_section: dict[str, Any] = {"stage": zero.stage}
    if zero.offload_optimizer:
        zero_section["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if zero.offload_params:
        zero_section["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": first.micro_batch * first.grad_accum * plan.world_size,
        "train_micro_batch_size_per_gpu": first.micro_batch,
        "gradient_accumulation_steps": first.grad_accum,
        "gradient_clipping": float(spec.train.grad_clip or 0.0),  # 0 disables clipping
        "zero_optimization": zero_section,
        "bf16": {"enabled": plan.precision == "bf16"},
        "fp16": _fp16(plan.precision),
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
        "steps_per_print": QUIET_STEPS,
    }
    if zero.offload_optimizer:
        # tabula hands DeepSpeed its own optimizer; DeepSpeed otherwise insists on its CPU Adam
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def _fp16(precision: str) -> dict[str, Any]:
    if precision != "fp16":
        return {"enabled": False}
    # loss_scale 0: dynamic loss scaling, starting at 2**16, halved on overflow, doubled after
    # loss_scale_window clean steps
    return {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
            "hysteresis": 2, "min_loss_scale": 1}
