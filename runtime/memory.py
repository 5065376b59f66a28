"""Will the model fit? The plan's memory per rank against what the device has free, before allocating.

    check_memory(spec, plan, device, ranks_here=1)    raises NotEnoughMemory with the plan's numbers
    allocation_message(error, spec, plan, device)     the same numbers when allocating failed anyway

The plan's memory per rank (compiler.estimate: weights, gradients, optimizer state, activations of the
largest stage, and what ZeRO offload keeps in host memory) is compared with the free memory of the
device: CUDA's `mem_get_info`; on the CPU, /proc/meminfo's MemAvailable, or less when a cgroup (a
container) limits this process. Ranks on one CPU machine share its memory. A run is refused when it
needs more than (1 - MARGIN) of what is free: the estimate leaves out the CUDA context, the allocator's
fragmentation, the data pipeline and Python itself. The estimate can be wrong for a model it does not
know well: TABULA_NO_MEMORY_CHECK=1 starts the run anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tabula.schemas.units import format_bytes

from .errors import NotEnoughMemory

if TYPE_CHECKING:
    import torch

    from tabula.compiler.plan import Plan
    from tabula.schemas.spec import Spec

MARGIN = 0.05  # of the free memory, kept for what the estimate does not count
SKIP_ENV = "TABULA_NO_MEMORY_CHECK"  # "1": start without comparing (an estimate that is wrong for a model)


def memory_needed(spec: Spec, plan: Plan, *, device_type: str) -> tuple[dict[str, int], dict[str, int]]:
    """(device bytes, host bytes) per rank by part (no "total"), as `tabula plan` lists them; on the CPU
    the host's part is in the same memory as the device's."""
    from tabula.compiler.estimate import estimate

    cost = estimate(spec, plan, device_type=device_type)
    device = {part: size for part, size in cost.memory_per_rank.items() if part != "total"}
    host = {part: size for part, size in cost.host_memory_per_rank.items() if part != "total"}
    return device, host


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now (CUDA: the driver's count; CPU: what this process may still take), or
    None when it cannot be told."""
    if device.type == "cuda":
        import torch

        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if device.type == "cpu":
        return host_free_memory()
    return None


def host_free_memory() -> int | None:
    """Bytes of RAM this process may still take: MemAvailable (psutil's `available` where /proc is
    missing), lowered to what is left under a cgroup's limit."""
    available = _meminfo_available()
    if available is None:
        try:
            import psutil  # type: ignore[import-untyped]

            available = int(psutil.virtual_memory().available)
        except (ImportError, OSError):
            available = None
    left = _cgroup_left()
    if left is not None:
        available = left if available is None else min(available, left)
    return available


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_left() -> int | None:
    """Memory left under this process's cgroup limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # v1's "no limit"
            return None
        return max(0, limit - usage)
    return None


def parts_text(parts: dict[str, int]) -> str:
    """`weights 4.1 GiB, optimizer state 8.2 GiB, ...`: the parts that need memory, largest first."""
    shown = sorted(((size, part) for part, size in parts.items() if size > 0), reverse=True)
    return ", ".join(f"{part.replace('_', ' ')} {format_bytes(size)}" for size, part in shown)


def check_memory(spec: Spec, plan: Plan, device: torch.device, *, ranks_here: int = 1, spec_path: str | None = None,
                 device_side: bool = True) -> None:
    """Raises NotEnoughMemory when the plan needs more memory than `device` has free (with MARGIN kept).
    `ranks_here`: the ranks that share this machine's host memory (and, on the CPU, its device memory).
    `device_side=False` checks only the host memory ZeRO offload needs (a launcher that must not open a
    CUDA context on the ranks' GPUs). Does nothing with TABULA_NO_MEMORY_CHECK=1 or when the free memory
    cannot be told."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return
    on_device, on_host = memory_needed(spec, plan, device_type=device.type)
    plan_hint = f"`tabula plan {spec_path}`" if spec_path else "`tabula plan SPEC`"
    if device.type == "cpu":
        _compare({**_merge(on_device, on_host)}, ranks_here, host_free_memory(), "this machine's memory", plan_hint)
        return
    if device_side:
        _compare(on_device, 1, free_memory(device), f"{device.type} device {device}", plan_hint)
    if on_host:
        _compare(on_host, ranks_here, host_free_memory(), "this machine's memory (ZeRO offload)", plan_hint)


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for part, size in b.items():
        merged[part] = merged.get(part, 0) + size
    return merged


def _compare(parts: dict[str, int], ranks: int, free: int | None, where: str, plan_hint: str) -> None:
    per_rank = sum(parts.values())
    needed = per_rank * ranks
    if free is None or needed <= free * (1 - MARGIN):
        return
    together = f", {format_bytes(needed)} for the {ranks} ranks on this machine," if ranks > 1 else ""
    raise NotEnoughMemory(
        f"the plan needs {format_bytes(per_rank)} per rank ({parts_text(parts)}){together} and {where} has "
        f"{format_bytes(free)} free. {plan_hint} shows where it goes; a smaller model or micro-batch "
        f"(train.micro_batch), parallel.activation_checkpointing=full, ZeRO offload or more ranks need less "
        f"({SKIP_ENV}=1 starts anyway)",
        needed=needed, free=free, parts=parts)


def is_allocation_failure(error: BaseException) -> bool:
    """Whether `error` is the device or the host running out of memory."""
    from .faults import is_oom

    text = str(error).lower()
    return (is_oom(error) or isinstance(error, MemoryError) or "can't allocate memory" in text
            or "cannot allocate memory" in text or "out of memory" in text)


def allocation_message(error: BaseException, spec: Spec, plan: Plan, device: torch.device) -> str:
    """Why building the model failed for lack of memory, with the plan's numbers."""
    on_device, on_host = memory_needed(spec, plan, device_type=device.type)
    parts = _merge(on_device, on_host) if device.type == "cpu" else on_device
    free = free_memory(device)
    has = f"; {format_bytes(free)} is free now" if free is not None else ""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (f"out of memory while allocating the model on {device}: the plan needs {format_bytes(sum(parts.values()))} "
            f"per rank ({parts_text(parts)}){has}. ({first})")
