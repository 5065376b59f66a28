"""What torch.compile costs and saves, per device type: the measured table `model.compile.enabled: auto`
decides from (compiler/compile_plan.py). One place: the bench measures, this module records.

Measured with `python bench/bench_compile.py` (the table part) on this project's 2-core AMD EPYC (AVX2,
no AVX-512), torch 2.13.0+cpu, inductor + gcc, fp32, 2026-11-29, other processes sharing the CPU (load
4-8 on 2 cores). CPU seconds of the process on one torch thread, compile workers and gcc included;
micro-batches of at most 16 sequences; each spec in two fresh processes, the first with an empty
compile cache (cold), the second with the cache the first filled (warm); dynamic shapes, block scope.

    spec          params  micro x seq      training graphs    stage change     evaluation    eager -> compiled step   break-even   cache
                                           cold     warm      cold    warm     cold   warm   (1 thread, a micro-batch)  cold  warm
    quickstart     3.8M   16x128, 16x256   41.4 s   3.0 s     0.5 s   0.1 s    13.0   1.1    1.16 -> 0.99 s (0.87x)    238    17    2.9 MiB
    llama-tiny     7.7M   16x256, 16x128   31.6 s   3.5 s     0.0 s   0.1 s    14.3   1.1    4.01 -> 3.48 s (0.94x)     61     7    3.0 MiB
    mistral-tiny   5.5M   16x128, 16x512   32.1 s   3.8 s    16.3 s   2.5 s    14.7   1.3    1.26 -> 1.17 s (0.89x)    355    42    4.4 MiB
    mla-tiny       6.8M   16x256, 16x128   66.7 s   3.9 s     0.1 s   0.0 s    21.0   1.9    2.66 -> 2.43 s (0.91x)    299    17    4.2 MiB

Break-even in micro-batches of the first shape; a plan's step is several (the quickstart's 4096-token
step at seq_len 128 is two: it breaks even after ~120 steps cold, ~9 warm). The x factor is the median
compiled/eager ratio over both shapes, cold and warm. The stage change compiles nothing with dynamic
shapes, except where the graph's structure changes (mistral-tiny's sliding window of 128 starts to mask
at seq_len 512: one more graph). With one static graph a shape (`dynamic_shapes: false`) the
quickstart's stage change recompiled for 12.4 s cold, 2.5 s warm, and the steady-state steps were as
fast as with dynamic shapes (0.87x and 0.89x against 0.88x and 0.88x, in alternation with eager).
One thread runs eager steps at 43-56 GFLOP/s (the plan's FLOPs over the measured time).

The row below rounds these: the compile costs are the medians (MLA's graphs take about twice as
long), the saving is the mean share (0.10), and the eager FLOP/s are two threads' (RUNS_NOTE).
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
        cold_seconds=36.0, warm_seconds=3.5, eval_cold_seconds=14.5, eval_warm_seconds=1.2,
        shape_cold_seconds=14.0, shape_warm_seconds=2.5, layer_factor=0.6, saving=0.10, eager_flops=75e9,
        measured="2-core AMD EPYC (AVX2, no AVX-512), torch 2.13.0+cpu, inductor + gcc, 2026-11-29",
    ),
}
