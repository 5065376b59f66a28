"""FSDP2 over a plain model: `torch.distributed.fsdp.fully_shard` on every block, then on the root.

Each block is one communication unit (its parameters gathered before its forward, freed after when
`reshard_after_forward`); the root unit holds the embedding, final norm and head (one unit, so a tied
embedding and head stay one parameter). Mixed precision: bf16 compute with fp32 master weights and
fp32 gradient reduction; CPU offload keeps shards, gradients and optimizer state in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh


@dataclass(frozen=True)
class FsdpPolicy:
    reshard_after_forward: bool = True
    precision: str = "fp32"  # "fp32" | "bf16" (the plan's resolved precision)
    offload: bool = False


def mixed_precision(precision: str):
    """FSDP2's MixedPrecisionPolicy for the plan's precision (None: fp32 throughout). fp16 would need a
    sharded gradient scaler: refused by `check_policy`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def check_policy(policy: FsdpPolicy, device_type: str) -> str | None:
    """Why FSDP2 cannot run this policy on `device_type` ranks (one line), or None."""
    if policy.precision == "fp16":
        return "parallel.precision fp16 is not supported by the fsdp backend (no loss scaling): use bf16 or fp32"
    if policy.offload and device_type != "cuda":
        return ("parallel.fsdp.offload moves a GPU's shards to host memory: ranks on the CPU hold them there already "
                "(FSDP2's CPUOffloadPolicy needs CUDA); set parallel.fsdp.offload=false")
    return None


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, policy: FsdpPolicy) -> nn.Module:
    """Shard `model` in place over `mesh` (1-D: the data-parallel ranks); returns it."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    options: dict[str, Any] = {"mesh": mesh}
    mp = mixed_precision(policy.precision)
    if mp is not None:
        options["mp_policy"] = mp
    if policy.offload:
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = list(cast(nn.ModuleList, model.blocks))
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by the backward: keep them gathered
        reshard = policy.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, reshard_after_forward=reshard, **options)
    fully_shard(model, reshard_after_forward=policy.reshard_after_forward, **options)
    return model
