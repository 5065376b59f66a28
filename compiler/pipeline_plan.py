"""Pipeline parallelism's plan (torch-free): the model's layers in pipeline order, their stage boundaries,
each stage's parameters, FLOPs and model-state memory, and the pipeline bubble.

    pipeline_layers(model, vocab_size, seq_len) -> [PipeLayer]   embedding, blocks, final norm, head
    balanced_bounds(weights, stages) -> [int]                    contiguous split minimising the largest stage
    plan_pipeline(spec, vocab_size, seq_len, precision) -> PipelinePlan

The runtime (runtime/parallel/pipeline.py) builds DeepSpeed's PipelineModule over the same layer list and
hands it these boundaries, so the stages that run are the stages `tabula plan` shows. With a tied
embedding and head, both the first and the last stage hold the embedding weight (DeepSpeed's tied layers
keep one copy a stage and add their gradients): its parameters count on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tabula.schemas.blocks.costs import FLOPS_PER_PARAMETER
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.spec import Spec


@dataclass(frozen=True)
class PipeLayer:
    name: str  # "embed", "block 3", "norm", "head"
    parameters: int
    flops_per_token: int  # training (forward and backward)


@dataclass(frozen=True)
class PipeStage:
    index: int
    first: int  # layer indices [first, stop)
    stop: int
    layers: tuple[str, ...]
    parameters: int
    flops_per_token: int
    state_bytes: int  # weights, gradients and optimizer state on each rank of this stage


@dataclass(frozen=True)
class PipelinePlan:
    stages: tuple[PipeStage, ...]
    micro_batches: int
    partition: str  # "parameters", "flops" or "layers"

    @property
    def bounds(self) -> list[int]:
        """DeepSpeed's `parts`: the first layer of each stage, then the layer count."""
        return [s.first for s in self.stages] + [self.stages[-1].stop]

    @property
    def bubble(self) -> float:
        """Idle fraction of a step under the 1F1B schedule: (stages - 1) / (micro_batches + stages - 1)."""
        return bubble_fraction(len(self.stages), self.micro_batches)


def bubble_fraction(stages: int, micro_batches: int) -> float:
    return (stages - 1) / (micro_batches + stages - 1)


def pipeline_layers(model: ModelSpec, vocab_size: int, seq_len: int) -> list[PipeLayer]:
    """The layers in pipeline order with their parameters (as `build_model` registers them) and FLOPs."""
    n_layers, d, block = model.n_layers, model.d_model, model.block
    params = [0] * (n_layers + 3)
    for name, shape in model.parameter_shapes(vocab_size):
        head = name.split(".")[0]
        if head in ("embed", "pos_embed"):
            index = 0
        elif head == "blocks":
            index = 1 + int(name.split(".")[1])
        elif head == "norm":
            index = n_layers + 1
        else:
            index = n_layers + 2
        params[index] += math.prod(shape)
    if model.tie_embeddings:
        params[-1] += vocab_size * d  # the head's stage holds its own copy of the tied weight
    # each layer's own block (a layer pattern's overrides, MoE's active experts, Mamba's mixer)
    flops = [model.position.flops_per_token(d)] + [layer.flops_per_token(d, seq_len) for layer in model.layer_blocks]
    flops += [block.norm.flops_per_token(d), FLOPS_PER_PARAMETER * vocab_size * d]
    names = ["embed"] + [f"block {i}" for i in range(n_layers)] + ["norm", "head"]
    return [PipeLayer(n, p, f) for n, p, f in zip(names, params, flops)]


def balanced_bounds(weights: list[int], stages: int) -> list[int]:
    """Boundaries [0, b1, ..., len(weights)] of `stages` non-empty contiguous parts whose largest sum is
    the smallest possible (ties: the earliest boundaries)."""
    n = len(weights)
    if not 1 <= stages <= n:
        raise ValueError(f"{stages} stages for {n} layers")
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[k][i]: the smallest largest part splitting the first i layers into k parts
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    bounds, i = [n], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        bounds.append(i)
    return bounds[::-1]


def state_bytes_per_parameter(precision: str, zero_stage: int, data_ranks: int) -> float:
    """Weights and gradients (2 + 2 bytes in bf16/fp16, 4 + 4 in fp32) and AdamW's state (8 bytes, plus 4 + 4
    for the fp32 master weights and gradients under bf16/fp16), the optimizer's part sharded over the
    data-parallel ranks of the stage under ZeRO-1."""
    half = precision in ("bf16", "fp16")
    model = 4 if half else 8
    optimizer = 16 if half else 8
    return model + optimizer / (data_ranks if zero_stage >= 1 else 1)


def plan_pipeline(spec: Spec, vocab_size: int, seq_len: int, precision: str, world_size: int | None = None) -> PipelinePlan:
    """The stages of `spec`'s pipeline (parallel.pipeline) at sequence length `seq_len`."""
    pipe = spec.parallel.pipeline
    layers = pipeline_layers(spec.model, vocab_size, seq_len)
    if isinstance(pipe.partition, list):
        if pipe.partition[-1] >= len(layers):
            raise ValueError(f"parallel.pipeline.partition: layer {pipe.partition[-1]} does not exist "
                             f"(layers 0..{len(layers) - 1}: embedding, {spec.model.n_layers} blocks, norm, head)")
        bounds, how = [0, *pipe.partition, len(layers)], "layers"
    else:
        if pipe.stages > len(layers):
            raise ValueError(f"parallel.pipeline.stages: {pipe.stages} stages for {len(layers)} layers")
        key = "parameters" if pipe.partition == "parameters" else "flops_per_token"
        bounds, how = balanced_bounds([getattr(layer, key) for layer in layers], pipe.stages), pipe.partition
    data_ranks = max(1, (world_size or spec.parallel.world_size) // pipe.stages)
    per_param = state_bytes_per_parameter(precision, spec.parallel.zero.stage, data_ranks)
    stages = []
    for index, (first, stop) in enumerate(zip(bounds, bounds[1:])):
        part = layers[first:stop]
        params = sum(layer.parameters for layer in part)
        stages.append(PipeStage(index, first, stop, tuple(layer.name for layer in part), params,
                                sum(layer.flops_per_token for layer in part), math.ceil(params * per_param)))
    return PipelinePlan(tuple(stages), pipe.micro_batches, how)
