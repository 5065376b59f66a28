"""Tensor parallelism over a plain model with PyTorch's DTensor plans (torch.distributed.tensor.parallel).

Per block: q/k/v projections column-parallel (each rank computes n_heads / size heads), the output
projection row-parallel (partial sums reduced); the MLP's up/gate column-parallel and down
row-parallel (each rank holds hidden / size units). The embedding is vocabulary-parallel (row-wise
over the vocabulary, outputs reduced) and the head column-parallel with its logits left sharded over
the vocabulary, so the loss runs under `loss_parallel` and no rank holds the whole logits. Norms and
positions stay replicated. FSDP2 (parallel/fsdp.py) then shards what is left on each rank over the
data-parallel dimension of the 2-D mesh.

Why DTensor and not DeepSpeed's AutoTP training: DTensor plans compose with FSDP2 on one 2-D mesh
(parameters sharded over both dimensions, FSDP's ZeRO-3-like memory), and torch.distributed.checkpoint
saves their shards by global position, so a checkpoint reloads at any world or tensor size, into
FSDP2 alone or, consolidated, into the local and DeepSpeed engines. AutoTP training combines only with
ZeRO 0-2 (not 3), finds the linears to split by the module patterns of Hugging Face models (tabula's
own modules would need rules of their own), and is DeepSpeed-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.distributed.device_mesh import DeviceMesh

if TYPE_CHECKING:
    from tabula.compiler.model import Transformer


def tensor_parallel_problems(model: Transformer, size: int) -> list[str]:
    """Why `model` cannot be split over `size` ranks (empty when it can)."""
    problems = []
    vocab = model.embed.num_embeddings
    if vocab % size:
        problems.append(f"the vocabulary ({vocab}) is not a multiple of parallel.tensor.size {size}")
    for i, block in enumerate(model.blocks):
        attn: Any = block.attn
        mlp: Any = block.mlp
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "n_heads", "n_kv_heads")):
            problems.append(f"blocks.{i}: attention kind {type(attn).__name__} has no tensor-parallel plan (mha/gqa/mqa do)")
        elif attn.n_heads % size or attn.n_kv_heads % size:
            problems.append(f"blocks.{i}: {attn.n_heads} heads / {attn.n_kv_heads} key-value heads are not multiples of "
                            f"parallel.tensor.size {size}")
        hidden = mlp.up.out_features if hasattr(mlp, "up") else None
        if hidden is None or not hasattr(mlp, "down"):
            problems.append(f"blocks.{i}: MLP kind {type(mlp).__name__} has no tensor-parallel plan")
        elif hidden % size:
            problems.append(f"blocks.{i}: MLP hidden size {hidden} is not a multiple of parallel.tensor.size {size}")
        if i == 0 and not problems:
            break  # every block is alike: the first one answers for all
    if getattr(model, "virtual_tokens", None) is not None or getattr(model, "finetune", None) is not None:
        problems.append("train.finetune methods are not tensor-parallel: use parallel.tensor.size 1")
    return problems


def apply_tensor_parallel(model: Transformer, mesh: DeviceMesh) -> Transformer:
    """Split `model` in place over `mesh` (1-D: the tensor-parallel ranks); returns it. Call
    `tensor_parallel_problems` first."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    size = mesh.size()
    parallelize_module(model, mesh, {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "lm_head": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    })
    if getattr(model, "tie_embeddings", False):
        model.lm_head.weight = model.embed.weight  # both Shard(0) over the vocabulary: one parameter again
    block: Any
    for block in model.blocks:
        plan: dict[str, Any] = {"attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(), "attn.v_proj": ColwiseParallel(),
                "attn.o_proj": RowwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel()}
        if hasattr(block.mlp, "gate"):
            plan["mlp.gate"] = ColwiseParallel()
        parallelize_module(block, mesh, plan)
        # the forward reshapes by these counts: each rank now holds its share of the heads
        block.attn.n_heads //= size
        block.attn.n_kv_heads //= size
    return model
