"""The numbers the wizard's plan panel shows for a spec, from the compiler's plan and estimate.

Imports the compiler when first called (the wizard calls it from a worker thread, the dashboard
never does); the device is found without importing torch where no GPU driver is present.
"""

from __future__ import annotations

from typing import Any

from .format import format_bytes, format_count, format_duration, format_tokens


def plan_rows(spec: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """(rows, notes) for a valid `tabula.schemas.Spec`. Raises the compiler's SpecErrors for
    specs that validate but cannot be planned (batch not divisible, unknown vocabulary ...)."""
    from tabula.compiler.estimate import estimate
    from tabula.compiler.plan import local_device_type, make_plan

    device = local_device_type()
    plan = make_plan(spec, device_type=device)
    cost = estimate(spec, plan, device_type=device)
    params = cost.parameters
    rows = [
        ("parameters", f"{format_count(params.total)} ({format_count(params.non_embedding)} non-embedding)"),
        ("memory/rank", f"{format_bytes(cost.memory_per_rank['total'])} on {device}, {plan.precision}"),
        ("total steps", f"{plan.total_steps} x {format_tokens(plan.batch_tokens)} tokens"),
        ("tokens", format_tokens(plan.total_tokens)),
        ("warmup", f"{plan.warmup_steps} steps"),
    ]
    for stage in plan.stages:
        rows.append((f"stage {stage.index + 1}", f"seq_len {stage.seq_len}, {stage.steps} steps, "
                     f"micro-batch {stage.micro_batch} x {stage.grad_accum} accum"))
    rows.append(("time", f"{format_duration(cost.seconds)} at {cost.mfu:.0%} MFU"))
    return rows, list(plan.notes) + list(cost.notes)
