"""Peak FLOP/s of the device, for model FLOPs utilisation (MFU = achieved model FLOP/s / peak).

GPUs: dense tensor-core peaks from the vendors' data sheets (no sparsity). CPUs have no such table:
the peak is one thread's fp32 matrix-multiply rate, measured at start-up (about 0.2 s), times the threads.
"""

from __future__ import annotations

import time

import torch

# name fragment (lower case) -> peak TFLOP/s by precision, dense. First match wins: specific names first.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("h200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("h100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM / NVL
    ("gh200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("b200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("a800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("l40s", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("a10g", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("a10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("a6000", {"bf16": 155.0, "fp16": 155.0, "fp32": 38.7}),
    ("4090", {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6}),
    ("3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    ("v100", {"bf16": 15.7, "fp16": 125.0, "fp32": 15.7}),
    ("t4", {"bf16": 8.1, "fp16": 65.0, "fp32": 8.1}),
    ("mi300", {"bf16": 1307.0, "fp16": 1307.0, "fp32": 163.0}),
    ("mi250", {"bf16": 362.0, "fp16": 362.0, "fp32": 45.3}),
]


def gpu_peak(name: str, precision: str) -> float | None:
    """Peak FLOP/s of a GPU named `name` (torch.cuda.get_device_name) at `precision`, or None if unknown."""
    lowered = name.lower()
    for fragment, peaks in GPU_PEAKS:
        if fragment in lowered:
            return peaks[precision] * 1e12
    return None


def measure_cpu_peak(seconds: float = 0.2, size: int = 512) -> float:
    """Peak fp32 FLOP/s of this process's threads: one thread's best `size` x `size` matrix-multiply rate
    over `seconds`, times the thread count. Measured on one thread because threads measured together on a
    shared machine wait for each other at every barrier: on 2 busy cores, 2 threads read 34 GFLOP/s where
    one thread alone reached 170, and the MFU over such a peak came out inflated (or, above 100%, absent).
    A busy machine takes whole time slices from one thread, and the best of many millisecond bursts finds a
    free one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _matmul_rate(seconds, size) * threads
    finally:
        torch.set_num_threads(threads)


def _matmul_rate(seconds: float, size: int) -> float:
    # its own generator: a measurement between steps must not move the training's random stream (dropout)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.mm(a, b)  # warm up the kernels and the allocator
    flops = 2.0 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * flops / (time.perf_counter() - started))
    return best


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from) for `device` at `precision`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, precision)
        return peak, f"{name} data sheet" if peak else f"{name}: not in the table, MFU not reported"
    return measure_cpu_peak(), "fp32 matmul measured at start-up"
