"""DeepSpeed's own word on a DeepSpeed config dict and on memory, without starting any ranks.

`check_config(config)` runs the dict through DeepSpeed's config classes (`DeepSpeedConfig`, whose
sections are pydantic models with unknown keys forbidden: `DeepSpeedZeroConfig`, the offload
configs, ...) as `deepspeed.initialize` would, but with the world size taken from the batch keys
instead of from an initialised process group. Problems come back as readable lines, never raised.

`deepspeed_memory_estimates(...)` gives DeepSpeed's own per-device and per-node estimates of the
model states (parameters, gradients, optimizer) for each ZeRO stage and offload choice, from the
parameter counts alone (no model is built), so `tabula plan` can print them beside tabula's estimate.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

# DeepSpeed ignores unknown top-level keys silently; a typo there (`zero_optimisation`) would change
# nothing and say nothing. These are the sections and keys of DeepSpeed's documented config JSON.
KNOWN_TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
        "managed_gradient_accumulation", "steps_per_print", "dump_state", "disable_python_gc",
        "disable_allgather", "communication_data_type", "seq_parallel_communication_data_type",
        "prescale_gradients", "gradient_predivide_factor", "gradient_allreduce_op", "gradient_clipping",
        "zero_optimization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
        "optimizer", "scheduler", "fp16", "bf16", "bfloat16", "amp", "torch_autocast", "data_types",
        "activation_checkpointing", "flops_profiler", "wall_clock_breakdown", "memory_breakdown",
        "autotuning", "comms_logger", "tensorboard", "wandb", "csv_monitor", "comet", "aio",
        "checkpoint", "dataloader_drop_last", "log_level", "data_efficiency", "curriculum_learning",
        "hybrid_engine", "pipeline", "weight_quantization", "compression_training", "compile",
        "timers", "tensor_parallel", "sequence_parallel_size", "expert_parallel", "elasticity",
        "nebula", "datastates", "vocabulary_size", "use_data_before_expert_parallelism",
        "eigenvalue", "progressive_layer_drop", "sparse_attention", "quantize_training",
        "sparse_gradients", "gradient_compression",
    }
)


def _quiet_deepspeed():
    """DeepSpeed logs its accelerator choice and config details at import and parse time."""
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)


def _world_size(config: dict) -> tuple[int | None, str | None]:
    batch = config.get("train_batch_size")
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps", 1)
    if not all(isinstance(v, int) and v > 0 for v in (batch, micro, accum)):
        return None, None
    if batch % (micro * accum):
        return None, (
            f"train_batch_size ({batch}) is not a multiple of train_micro_batch_size_per_gpu ({micro}) "
            f"x gradient_accumulation_steps ({accum}), so no whole number of ranks gives it"
        )
    return batch // (micro * accum), None


def check_config(config: dict, *, world_size: int | None = None) -> list[str]:
    """Validate a DeepSpeed config dict with DeepSpeed's own config classes, as `deepspeed.initialize`
    parses it, without initialising distributed. `world_size` defaults to
    train_batch_size / (micro-batch x accumulation). Returns the problems as readable lines;
    an empty list means DeepSpeed accepts the config."""
    if not isinstance(config, dict):
        return [f"a DeepSpeed config is a dict (JSON object), found {type(config).__name__}"]
    problems = [
        f"unknown top-level key {key!r}: DeepSpeed would ignore it silently"
        for key in config
        if key not in KNOWN_TOP_LEVEL_KEYS
    ]
    derived, problem = _world_size(config)
    if problem:
        problems.append(problem)
    world = world_size or derived or 1

    _quiet_deepspeed()
    from pydantic import ValidationError

    with contextlib.redirect_stdout(io.StringIO()):
        from deepspeed.runtime.config import DeepSpeedConfig

        class _Checked(DeepSpeedConfig):
            # DeepSpeedConfig asks the (uninitialised) process group for the world size and falls back
            # to 1; the batch arithmetic must be checked against the world size the run will have.
            def _configure_train_batch_size(self):
                self.world_size = world
                super()._configure_train_batch_size()

        try:
            _Checked(dict(config))
        except ValidationError as error:
            problems.extend(_pydantic_lines(error))
        except (AssertionError, ValueError, TypeError, KeyError) as error:
            message = str(error).strip() or f"{type(error).__name__} while parsing the config"
            problems.append(message)
        except Exception as error:  # DeepSpeedConfigError and anything else DeepSpeed raises on bad input
            problems.append(f"{type(error).__name__}: {error}")
    return problems


def _pydantic_lines(error) -> list[str]:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        section = error.title  # e.g. DeepSpeedZeroConfig: names the section the key lives in
        found = f" (found {item['input']!r})" if item.get("type") != "missing" and "input" in item else ""
        lines.append(f"{section}: {where}: {item['msg']}{found}")
    return lines


# ---------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class DeepSpeedEstimate:
    """DeepSpeed's estimate of the model-state memory (weights, gradients, optimizer) for one choice."""

    stage: int  # ZeRO stage (DeepSpeed has one estimator for stages 1 and 2)
    offload_optimizer: bool
    offload_params: bool
    per_device_bytes: int  # on each GPU (each rank)
    per_node_cpu_bytes: int  # host memory on each node
    largest_layer_bytes: int = 0  # ZeRO-3: the largest layer gathered at once

    @property
    def label(self) -> str:
        offload = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        return f"ZeRO-{self.stage}" + (f" offload {'+'.join(offload)}" if offload else "")


def deepspeed_memory_estimates(
    total_params: int,
    largest_layer_params: int,
    *,
    world_size: int,
    num_nodes: int = 1,
    buffer_factor: float = 1.5,
) -> list[DeepSpeedEstimate]:
    """DeepSpeed's own model-state memory estimates (stage_1_and_2.estimate_zero2_model_states_mem_needs
    and stage3.estimate_zero3_model_states_mem_needs, the functions behind its `*_all_cold` printers),
    for stages 1-2 with and without optimizer offload and stage 3 with each offload choice.

    `total_params`: parameters counted once (tied weights once); `largest_layer_params`: the largest
    single parameter tensor (ZeRO-3 gathers one at a time); `world_size`: ranks over all nodes.
    DeepSpeed's formulas assume 16-bit training with fp32 master weights and Adam (18 bytes a
    parameter of sharded state plus 2 of 16-bit weights), and include its `buffer_factor` slack on
    the CPU side: compare them with tabula's estimate, which follows the plan's precision.
    """
    _quiet_deepspeed()
    with contextlib.redirect_stdout(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    per_node = max(1, world_size // num_nodes)
    rows = []
    for offload in (False, True):
        cpu, device = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node=per_node, num_nodes=num_nodes, cpu_offload=offload,
            additional_buffer_factor=buffer_factor,
        )
        for stage in (1, 2):
            rows.append(DeepSpeedEstimate(stage, offload, False, device, cpu))
    for offload_optimizer, offload_params in ((False, False), (True, False), (True, True)):
        cpu, device, largest = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node=per_node, num_nodes=num_nodes,
            cpu_offload=offload_optimizer, cpu_offload_params=offload_params, zero_init=True,
            additional_buffer_factor=buffer_factor,
        )
        rows.append(DeepSpeedEstimate(3, offload_optimizer, offload_params, device, cpu, largest))
    return rows
