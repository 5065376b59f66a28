"""What torch.compile costs and saves, per device type: the measured table `model.compile.enabled: auto`
decides from (compiler/compile_plan.py). One place: the bench measures, this module records.

PLACEHOLDER_TABLE
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompileCosts:
    """One device type's measured compile costs and savings (seconds are wall-clock on that device)."""

    cold_seconds: float  # the training graphs (one block and the loss, forward and backward, block scope), empty cache
    warm_seconds: float  # the same graphs loaded from the persistent cache (FX graph and AOTAutograd caches hit)
    eval_cold_seconds: float  # the inference graphs evaluation and sampling add (no-grad block and loss), empty cache
    eval_warm_seconds: float  # the same, warm
    shape_cold_seconds: float  # each further static shape's graphs (compile.shapes: static), empty cache
    shape_warm_seconds: float  # the same, warm
    layer_factor: float  # scope model: the compile grows by this share of the block's cost per further layer
    saving: float  # share of an eager training step's time a compiled step saves at steady state
    eager_flops: float  # FLOP/s an eager fp32 training step achieves: turns the plan's FLOPs into step seconds
    measured: str  # where and when


COSTS: dict[str, CompileCosts] = {
    "cpu": CompileCosts(
        cold_seconds=33.0, warm_seconds=4.5, eval_cold_seconds=12.0, eval_warm_seconds=2.0,
        shape_cold_seconds=12.0, shape_warm_seconds=2.5, layer_factor=0.6, saving=0.11, eager_flops=75e9,
        measured="2-core AMD EPYC (AVX2, no AVX-512), torch 2.13.0+cpu, inductor + gcc, 2026-11-29",
    ),
}
