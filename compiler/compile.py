"""torch.compile and activation checkpointing, applied by functions over a plain model.

Both keep parameter names unchanged (`Module.compile()` compiles in place, and checkpointing
is a flag each block reads), so checkpoints and Hugging Face exports see the same names
whether or not a run compiled or checkpointed. Apply checkpointing before compiling.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tabula.schemas.model import Compile

# `enabled: auto` on a CPU: measured on this project's 2-core AMD EPYC (AVX2, fp32, torch 2.13,
# inductor with gcc), the quickstart model (4 layers, d_model 256, GQA 8/2, vocab 8192), batch
# 8 x 256 tokens, forward+backward, median of 10 steps after 2 warm-up steps (2026-11-28,
# other processes sharing the CPU):
#     eager 0.427-0.442 s/step; compiled per block 0.411 s/step (1.04-1.08x); the first two
#     compiled steps took 27.9 s against 2.6 s eager.
# bench/bench_model.py, CPU time on one thread (block scope with the loss compiled): eager
# 832 ms/step, compiled 768 ms/step (1.08x).
# A 5-8% gain needs several hundred steps to repay 25 s of compiling (the quickstart's whole
# run is ~180 steps): it does not measurably pay on a CPU, so auto compiles on CUDA only.
AUTO_COMPILES_ON = ("cuda",)


def should_compile(compile_spec: Compile, device_type: str) -> bool:
    """Whether `model.compile` asks for compilation on this device type (auto: CUDA only)."""
    if compile_spec.enabled == "auto":
        return device_type in AUTO_COMPILES_ON
    return bool(compile_spec.enabled)


def apply_compile(model: nn.Module, compile_spec: Compile, device_type: str) -> nn.Module:
    """Compiles `model` in place as `compile_spec` says and returns it.

    scope block: each transformer block is compiled on its own (regional compilation): the
    blocks share one compiled graph, so compile time is that of one block and the speed is
    the same; the loss is compiled too (log-softmax over the vocabulary fuses into far fewer
    passes: ~1.5x faster on the quickstart's 2048 x 8192 logits on a CPU).
    scope model: the whole forward is one graph (longer compile)."""
    if not should_compile(compile_spec, device_type):
        return model
    options = {"mode": compile_spec.mode, "fullgraph": compile_spec.fullgraph}
    if compile_spec.scope == "model":
        model.compile(**options)
    else:
        for block in model.blocks:
            block.compile(**options)
        model.loss_fn = torch.compile(model.loss_fn, **options)
    return model


def apply_activation_checkpointing(model: nn.Module, policy: Literal["none", "full", "every_n"], every_n: int = 2) -> nn.Module:
    """Recompute blocks' activations in the backward pass (torch.utils.checkpoint, non-reentrant).

    none: no block; full: every block; every_n: blocks 0, n, 2n, ... (ceil(n_layers / n) of them).
    Returns the model, changed in place."""
    for index, block in enumerate(model.blocks):
        if policy == "full":
            block.checkpoint_activations = True
        elif policy == "every_n":
            block.checkpoint_activations = index % every_n == 0
        else:
            block.checkpoint_activations = False
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` was compiled in place (Module.compile)."""
    return getattr(module, "_compiled_call_impl", None) is not None
