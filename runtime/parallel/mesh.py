"""The process group and device mesh of a torchrun-launched run (the fsdp backend).

    init_process_group(timeout_minutes) -> (rank, world)
    device_mesh(world, tensor) -> DeviceMesh with dims ("dp", "tp")
    rank_device() -> the rank's device

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; gloo on CPUs, NCCL on GPUs. A
collective waiting past the timeout fails instead of hanging (torchrun then ends the other ranks).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def rank_device() -> torch.device:
    """This rank's device: its local GPU, or the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init_process_group(timeout_minutes: float = 10.0) -> tuple[int, int]:
    """Join the run's process group (once); returns (rank, world size)."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size()


def device_mesh(world: int, tensor: int) -> DeviceMesh:
    """A 2-D mesh: `world // tensor` data-parallel (FSDP) groups by `tensor` tensor-parallel ranks. The
    tensor ranks are the inner dimension: neighbours on one node, where the links are fastest."""
    if world % tensor:
        raise ValueError(f"parallel.tensor.size {tensor} must divide the {world} ranks")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return init_device_mesh(device_type, (world // tensor, tensor), mesh_dim_names=("dp", "tp"))
