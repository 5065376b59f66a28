"""torch.compile and activation checkpointing, applied by functions over a plain model.

Both keep parameter names unchanged (`Module.compile()` compiles in place, and checkpointing
is a flag each block reads), so checkpoints and Hugging Face exports see the same names
whether or not a run compiled or checkpointed. Apply checkpointing before compiling.

Whether to compile is the plan's decision (`Plan.compile`, compiler/compile_plan.py, from the measured
table in compiler/compile_costs.py); `apply_compile` carries it out. Dynamic shapes: the batch and
sequence dimensions of the compiled regions' inputs are marked dynamic before each call, so one graph
serves every curriculum stage, evaluation batch and sampling length. Measured against one graph a
shape (static) on the quickstart (bench/bench_compile.py): the same steady-state speed, and a stage
change compiles nothing instead of recompiling (~12 s cold on a 2-core CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from tabula.schemas.model import Compile

if TYPE_CHECKING:
    from .compile_plan import CompileDecision

# Without a plan to weigh it (a model built outside a run), `enabled: auto` compiles on CUDA only.
AUTO_COMPILES_ON = ("cuda",)


def should_compile(compile_spec: Compile, device_type: str) -> bool:
    """Whether `model.compile` asks for compilation on this device type when no plan decides (auto: CUDA only)."""
    if compile_spec.enabled == "auto":
        return device_type in AUTO_COMPILES_ON
    return bool(compile_spec.enabled)


def apply_compile(model: nn.Module, compile_spec: Compile, device_type: str, *, decision: CompileDecision | None = None) -> nn.Module:
    """Compiles `model` in place as `decision` (the plan's `Plan.compile`) says, else as `compile_spec`
    alone says (`should_compile`), and returns it. Compilation itself happens at the first call.

    scope block: each transformer block is compiled on its own (regional compilation): the
    blocks share one compiled graph, so compile time is that of one block and the speed is
    the same; the loss is compiled too (log-softmax over the vocabulary fuses into far fewer
    passes: ~1.5x faster on the quickstart's 2048 x 8192 logits on a CPU).
    scope model: the whole forward is one graph (longer compile).
    mode reduce-overhead (CUDA only; the plan turns it into default elsewhere) replays CUDA graphs: a
    new step is marked before each forward, and the loss is copied out of the graph's memory."""
    if decision is not None:
        if not decision.enabled:
            return model
        mode, dynamic = decision.mode, decision.dynamic_shapes
    else:
        if not should_compile(compile_spec, device_type):
            return model
        mode, dynamic = compile_spec.mode, compile_spec.dynamic_shapes
        if device_type != "cuda" and mode == "reduce-overhead":
            mode = "default"
    options = {"mode": mode, "fullgraph": compile_spec.fullgraph}
    graphs = mode == "reduce-overhead"
    if compile_spec.scope == "model":
        _compile_module(model, options, _model_dims if dynamic else None)
        if graphs:
            model._compiled_call_impl = _cuda_graph_steps(model._compiled_call_impl)
    else:
        for block in model.blocks:
            _compile_module(block, options, _block_dims if dynamic else None)
        model.loss_fn = _compiled(model.loss_fn, options, _loss_dims if dynamic else None)
        if graphs:
            model.register_forward_pre_hook(_new_cuda_graph_step)  # the model itself runs eagerly here
            model.loss_fn = _copied_out(model.loss_fn)
    return model


# Which dimensions of a compiled region's inputs follow the batch (B) and sequence length (T):
# (tensor, dims) pairs, from the region's positional arguments.
def _block_dims(x, rope=None, mask=None, *_, **__) -> list[tuple[Any, tuple[int, ...]]]:
    marked = [(x, (0, 1))]  # (B, T, C)
    if rope is not None:
        marked += [(table, (0,)) for table in rope]  # (T, rotary dim)
    if isinstance(mask, torch.Tensor):  # a FlexAttention BlockMask is not marked
        marked.append((mask, (0, 1) if mask.dim() == 2 else (0, 2, 3)))  # (T, T) or (B, 1, T, T)
    return marked


def _loss_dims(logits, targets, *_, **__) -> list[tuple[Any, tuple[int, ...]]]:
    return [(logits, (0, 1)), (targets, (0, 1))]  # (B, T, vocab), (B, T)


def _model_dims(input_ids, targets=None, *_, document_ids=None, **__) -> list[tuple[Any, tuple[int, ...]]]:
    return [(t, (0, 1)) for t in (input_ids, targets, document_ids) if t is not None]  # each (B, T)


def _marking(fn: Callable, dims: Callable[..., list]) -> Callable:
    """`fn` with the dimensions `dims` names marked dynamic on its inputs before each call.
    maybe_mark_dynamic: a dimension the graph must specialise (a size-1 batch) recompiles instead of failing."""

    def call(*args, **kwargs):
        for tensor, marked in dims(*args, **kwargs):
            for dim in marked:
                torch._dynamo.maybe_mark_dynamic(tensor, dim)
        return fn(*args, **kwargs)

    return call


def _compiled(fn: Callable, options: dict, dims: Callable[..., list] | None) -> Callable:
    compiled = torch.compile(fn, **options)
    return _marking(compiled, dims) if dims is not None else compiled


def _compile_module(module: nn.Module, options: dict, dims: Callable[..., list] | None) -> None:
    """Module.compile (in place, names unchanged), with the inputs' dynamic dimensions marked first."""
    module.compile(**options)
    if dims is not None:
        module._compiled_call_impl = _marking(module._compiled_call_impl, dims)


def _new_cuda_graph_step(module: nn.Module, args: tuple) -> None:
    torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten now


def _copied_out(loss_fn: Callable) -> Callable:
    """The loss, copied out of the CUDA graph's memory (the engine keeps it across micro-batches)."""

    def call(*args, **kwargs):
        return loss_fn(*args, **kwargs).clone()

    return call


def _cuda_graph_steps(forward: Callable) -> Callable:
    """scope model: each forward starts a new CUDA graph step, and its loss is copied out of the graph's memory."""

    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        out = forward(*args, **kwargs)
        return (out[0], out[1].clone()) if isinstance(out, tuple) else out

    return call


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
