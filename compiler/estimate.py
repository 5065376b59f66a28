"""What a spec costs before anything is built: parameters, FLOPs, memory per rank and time.

Everything here is arithmetic over the spec (no module is materialised), so `tabula plan` answers
in milliseconds for a 1.3B model on a laptop:

- parameters: the exact count of `build_model(spec)` (tests hold the two equal), from the same
  parameter list the model registers (`parameter_shapes`, each kind listing its own, from its
  spec class in schemas/blocks/); a tied output head is counted once.
- FLOPs per token (training, forward + backward): 6 N + 6 L T nh (qk + v), the PaLM appendix's
  6N + 12 L H Q T with Q split into the query/key and value head widths (MLA has two), each kind
  reporting its part. N counts the parameters that take part in matrix multiplies: all but the
  token and position embeddings, plus the output projection (vocab x d_model) once, tied or not.
  T is the stage's seq_len.
- memory per rank: weights, gradients, the optimizer's fp32 master weights and gradients, its
  state, autocast's weight copies and ZeRO-3's gathered tensor, for the precision, ZeRO stage and
  offload of the spec (`model_state_bytes`); activations in `activations.py`. A fine-tuning method
  (`train.finetune`) trains part of the model (`count_trainable`): gradients and optimizer state
  for that part alone, its adapters' weights added; the estimate says what that saves.
- time: total FLOPs / (peak FLOP/s x MFU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tabula.schemas.blocks.costs import FLOPS_PER_PARAMETER, Shapes
from tabula.schemas.finetune import QLora, linear_modules
from tabula.schemas.kernels import Kernels
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.spec import Spec

from .activations import activation_bytes

if TYPE_CHECKING:
    from .plan import Plan

# Default peak TFLOP/s for the time estimate: an H100 SXM's dense tensor-core peaks (fp32 without
# TF32), and a laptop-class CPU's fp32 matmul rate (this project's 2-core machine measures
# 0.06-0.14 TFLOP/s; half precision is far slower on CPUs without bf16 units).
DEFAULT_PEAK_TFLOPS = {"cuda": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}, "cpu": {"bf16": 0.1, "fp16": 0.1, "fp32": 0.1}}
DEFAULT_MFU = 0.4

# Memory of one rank's device: an 80 GB H100 on CUDA; on a CPU, whose memory is shared with the
# data pipeline and everything else, a share of a laptop's RAM. The plan fits micro-batches in it.
DEVICE_MEMORY = {"cuda": 80 * 10**9, "cpu": 8 * 2**30}


def default_peak_flops(device_type: str, precision: str) -> float:
    """Peak FLOP/s assumed for a rank of `device_type` at `precision` (DEFAULT_PEAK_TFLOPS)."""
    return DEFAULT_PEAK_TFLOPS.get(device_type, DEFAULT_PEAK_TFLOPS["cpu"])[precision] * 1e12


# ---------------------------------------------------------------- parameters


def parameter_shapes(model: ModelSpec, vocab_size: int) -> Shapes:
    """(name, shape) of every parameter `build_model` registers, in its order and with its names
    (compiler/model.py's docstring lists them), as each kind reports its own. A tied output head
    is not listed twice. (The model spec answers: `Model.parameter_shapes`.)"""
    return model.parameter_shapes(vocab_size)


@dataclass(frozen=True)
class Parameters:
    """Parameter counts. `embedding`: token embedding, learned positions and an untied output head;
    `matmul`: the N of 6N (everything but the input embeddings, plus the output projection once);
    `active`: the parameters one token runs through (all but a mixture of experts' unchosen experts);
    `vision`: model.vision's encoder and projector (in total and non_embedding; they run per image patch,
    so neither matmul nor active counts them)."""

    total: int
    embedding: int
    non_embedding: int
    matmul: int
    active: int
    vision: int = 0


def count_parameters(model: ModelSpec, vocab_size: int) -> Parameters:
    """Exact parameter counts of the model `model` describes with a `vocab_size` vocabulary."""
    total = embedding = vision = 0
    for name, shape in parameter_shapes(model, vocab_size):
        n = math.prod(shape)
        total += n
        if name in ("embed.weight", "pos_embed.weight", "lm_head.weight"):
            embedding += n
        elif name.startswith("vision."):
            vision += n
    non_embedding = total - embedding
    inactive = sum(block.parameters(model.d_model) - block.active_parameters(model.d_model) for block in model.layer_blocks)
    return Parameters(total, embedding, non_embedding, non_embedding - vision + vocab_size * model.d_model, total - inactive - vision, vision)


@dataclass(frozen=True)
class Trainable:
    """What the optimizer updates: `trainable` parameters (a fine-tuning method's adapters included),
    `frozen` base parameters held fixed, `added` parameters the method adds (LoRA's matrices, virtual
    tokens); `method` is train.finetune's kind, or None (every parameter trained)."""

    method: str | None
    trainable: int
    frozen: int
    added: int


def trainable_shapes(spec: Spec, vocab_size: int) -> Shapes:
    """(name, shape) of the parameters the optimizer updates, as apply_finetune leaves them."""
    shapes = parameter_shapes(spec.model, vocab_size)
    finetune = spec.train.finetune
    return shapes if finetune is None else finetune.trainable_shapes(spec.model, shapes)


def count_trainable(spec: Spec, vocab_size: int) -> Trainable:
    """Exact counts of what `train.finetune` trains of the model (the built model's, tests hold them equal)."""
    total = count_parameters(spec.model, vocab_size).total
    finetune = spec.train.finetune
    if finetune is None:
        return Trainable(None, total, 0, 0)
    shapes = parameter_shapes(spec.model, vocab_size)
    added = sum(math.prod(shape) for _, shape in finetune.added_shapes(spec.model, shapes))
    trainable = sum(math.prod(shape) for _, shape in trainable_shapes(spec, vocab_size))
    return Trainable(finetune.kind, trainable, total + added - trainable, added)


# ---------------------------------------------------------------- FLOPs


def flops_per_token(model: ModelSpec, vocab_size: int, seq_len: int) -> int:
    """Training FLOPs per token (forward and backward) at sequence length `seq_len`: what each
    kind reports (6 per parameter, and attention's scores), and the output projection's 6 x
    vocab x d_model, tied or not (the token and position embeddings are lookups)."""
    d = model.d_model
    layers = sum(block.flops_per_token(d, seq_len) for block in model.layer_blocks)
    outside = model.position.flops_per_token(d) + model.block.norm.flops_per_token(d) + FLOPS_PER_PARAMETER * vocab_size * d
    return layers + outside


# ---------------------------------------------------------------- memory of model states


def optimizer_state_elements(spec: Spec, vocab_size: int, *, every_parameter: bool = False) -> int:
    """Elements of optimizer state, for the trainable parameters only (`every_parameter`: as if all
    trained): AdamW two per parameter, Lion one, SGD one with momentum, Adafactor factored second
    moments (rows + columns of each matrix, whole vectors)."""
    optimizer = spec.train.optimizer
    shapes = parameter_shapes(spec.model, vocab_size) if every_parameter else trainable_shapes(spec, vocab_size)
    n = sum(math.prod(shape) for _, shape in shapes)
    if optimizer.kind == "adamw":
        return 2 * n
    if optimizer.kind == "lion":
        return n
    if optimizer.kind == "sgd":
        return n if optimizer.momentum > 0 else 0
    return sum(shape[0] + shape[1] if len(shape) == 2 else math.prod(shape) for _, shape in shapes)


def model_state_bytes(spec: Spec, vocab_size: int, precision: str, world_size: int, *,
                      every_parameter: bool = False) -> tuple[dict[str, int], dict[str, int]]:
    """(device bytes, host bytes) per rank by part: weights, gradients, master_weights,
    master_gradients, optimizer_state, weight_copies, gathered_weights.

    A fine-tuning method (train.finetune) keeps gradients, master copies and optimizer state for
    the trainable parameters alone, and its adapters add weights; QLoRA holds the blocks' linear
    weights in 4 bits. `every_parameter`: the same model trained whole (what the method saves).

    fp32: fp32 weights and gradients, no master copy. bf16/fp16 on one local process: autocast
    over fp32 weights (weights and gradients fp32), which keeps a half-precision copy of every
    matmul weight from the forward to the backward (weight_copies). bf16/fp16 with DeepSpeed:
    half-precision weights and gradients, and the optimizer's fp32 master weights and fp32
    gradients: ZeRO's 2 + 2 + 16 bytes a parameter with AdamW, as DeepSpeed's own estimator counts.
    ZeRO 1 shards the optimizer's part (master weights and gradients, state) over the ranks, 2 also
    the gradients, 3 also the weights, and stage 3 gathers each layer's full weights when it runs
    (gathered_weights: the largest parameter tensor and its gradient). offload_optimizer keeps the
    optimizer's part and the gradients in host memory, offload_params the weights."""
    if spec.parallel.backend == "fsdp":
        return fsdp_state_bytes(spec, vocab_size, precision, world_size)
    params = count_parameters(spec.model, vocab_size)
    finetune = None if every_parameter else spec.train.finetune
    trained = count_trainable(spec, vocab_size) if finetune is not None else Trainable(None, params.total, 0, 0)
    n, t = params.total + trained.added, trained.trainable
    state = optimizer_state_elements(spec, vocab_size, every_parameter=every_parameter)
    zero, deepspeed = spec.parallel.zero, spec.parallel.backend == "deepspeed"
    half = precision in ("bf16", "fp16")
    weight_bytes = 2 if half and deepspeed else 4
    weights = n * weight_bytes
    if isinstance(finetune, QLora):  # the blocks' linear weights in 4 bits, the rest as it was
        quantized = sum(math.prod(shape) for name, shape in linear_modules(parameter_shapes(spec.model, vocab_size)).items()
                        if name.startswith("blocks."))
        weights = math.ceil((n - quantized) * weight_bytes + finetune.quantized_bytes(quantized))
    parts = {
        "weights": weights,
        "gradients": t * weight_bytes,
        "master_weights": t * 4 if half and deepspeed else 0,
        "master_gradients": t * 4 if half and deepspeed else 0,
        "optimizer_state": state * 4,
        "weight_copies": 2 * params.matmul if half and not deepspeed else 0,
        # the gathered tensor and its gradient, as DeepSpeed's estimator counts them
        "gathered_weights": 2 * _largest_layer(spec.model, vocab_size) * weight_bytes if zero.stage == 3 else 0,
    }
    optimizer_side = world_size if zero.stage >= 1 else 1
    shards = {
        "weights": world_size if zero.stage >= 3 else 1,
        "gradients": world_size if zero.stage >= 2 else 1,
        "master_weights": optimizer_side,
        "master_gradients": optimizer_side,
        "optimizer_state": optimizer_side,
    }
    per_rank = {part: math.ceil(size / shards.get(part, 1)) for part, size in parts.items()}
    offloaded = {"weights"} if zero.offload_params else set()
    if zero.offload_optimizer:
        offloaded |= {"gradients", "master_weights", "master_gradients", "optimizer_state"}
    device = {part: 0 if part in offloaded else size for part, size in per_rank.items()}
    host = {part: size for part, size in per_rank.items() if part in offloaded}
    return device, host


TENSOR_SPLIT = ("q_proj", "k_proj", "v_proj", "o_proj", "up", "gate", "down")  # runtime/parallel/tensor.py's plan


def tensor_split_elements(model: ModelSpec, vocab_size: int, tensor: int) -> tuple[int, int]:
    """(parameters on each tensor-parallel rank, of which in the blocks): the embedding, head and the
    blocks' attention projections and MLP linears split `tensor` ways, norms and positions whole."""
    total = blocks = 0
    for name, shape in parameter_shapes(model, vocab_size):
        parts = name.split(".")
        split = name.startswith(("embed.", "lm_head.")) or any(p in TENSOR_SPLIT for p in parts[-3:-1])
        size = math.ceil(math.prod(shape) / tensor) if split else math.prod(shape)
        total += size
        blocks += size if name.startswith("blocks.") else 0
    return total, blocks


def fsdp_state_bytes(spec: Spec, vocab_size: int, precision: str, data_ranks: int) -> tuple[dict[str, int], dict[str, int]]:
    """(device bytes, host bytes) per rank under the fsdp backend: tensor parallelism splits the
    parameters (tensor_split_elements), FSDP2 shards fp32 weights, gradients and optimizer state over the
    `data_ranks`; a block's weights are gathered whole (in bf16 under bf16) for its forward and backward
    (gathered_weights: one block and its gradient, or every block's weights when
    `reshard_after_forward` is off). `fsdp.offload` keeps the shards and the optimizer state in host memory."""
    parallel = spec.parallel
    tensor = parallel.tensor.size
    per_tp, in_blocks = tensor_split_elements(spec.model, vocab_size, tensor)
    n_params = count_parameters(spec.model, vocab_size).total
    state = math.ceil(optimizer_state_elements(spec, vocab_size) * per_tp / max(1, n_params))
    gathered_bytes = 2 if precision == "bf16" else 4
    block = math.ceil(in_blocks / max(1, spec.model.n_layers))
    held = block * (1 if parallel.fsdp.reshard_after_forward else spec.model.n_layers)
    per_rank = {
        "weights": math.ceil(per_tp * 4 / data_ranks),
        "gradients": math.ceil(per_tp * 4 / data_ranks),
        "master_weights": 0,
        "master_gradients": 0,
        "optimizer_state": math.ceil(state * 4 / data_ranks),
        "weight_copies": 0,
        "gathered_weights": (held + block) * gathered_bytes if data_ranks > 1 or precision == "bf16" else 0,
    }
    offloaded = {"weights", "gradients", "optimizer_state"} if parallel.fsdp.offload else set()
    device = {part: 0 if part in offloaded else size for part, size in per_rank.items()}
    host = {part: size for part, size in per_rank.items() if part in offloaded}
    return device, host


def _largest_layer(model: ModelSpec, vocab_size: int) -> int:
    """Parameters of the largest tensor ZeRO-3 gathers whole (usually the embedding)."""
    return max(math.prod(shape) for _, shape in parameter_shapes(model, vocab_size))


# ---------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class StageCost:
    index: int
    seq_len: int
    tokens: int
    flops_per_token: int
    activations: dict[str, int]  # bytes per micro-batch: none / full / chosen


@dataclass(frozen=True)
class Estimate:
    """What `tabula plan` prints. Memory in bytes per rank; `memory_per_rank` is on the device
    (activations of the largest stage included), `host_memory_per_rank` what offload keeps in RAM."""

    parameters: Parameters
    flops_per_token: int  # at model.max_seq_len
    flops_per_token_seq_len: int
    memory_per_rank: dict[str, int]
    host_memory_per_rank: dict[str, int]
    stages: tuple[StageCost, ...]
    total_flops: float
    peak_flops: float
    mfu: float
    seconds: float
    notes: tuple[str, ...] = field(default=())
    trainable: Trainable | None = None  # what the optimizer updates (train.finetune's share)
    memory_saved: int = 0  # device bytes per rank a fine-tuning method saves against training every parameter
    kernel_memory_saved: int = 0  # activation bytes per rank model.kernels' fused loss saves against the standard one (largest stage)
    vision_flops_per_image: int = 0  # model.vision: training FLOPs of one image through the encoder and projector

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(spec: Spec, plan: Plan, *, peak_flops: float | None = None, mfu: float = DEFAULT_MFU,
             device_type: str | None = None) -> Estimate:
    """The cost of `spec` trained as `plan` says. `peak_flops` (FLOP/s per rank) defaults to
    DEFAULT_PEAK_TFLOPS for `device_type` (default: the plan's) and the plan's precision; the time
    is total FLOPs / (world size x peak x mfu)."""
    device_type = device_type or plan.device_type
    model, vocab = spec.model, plan.vocab_size
    params = count_parameters(model, vocab)
    device, host = model_state_bytes(spec, vocab, plan.precision, plan.world_size)
    saved = 0
    if spec.train.finetune is not None:
        whole, _ = model_state_bytes(spec, vocab, plan.precision, plan.world_size, every_parameter=True)
        saved = sum(whole.values()) - sum(device.values())
    policy = spec.parallel.activation_checkpointing
    every_n = spec.parallel.checkpoint_every_n
    stages, total_flops, largest = [], 0.0, 0
    for stage in plan.stages:
        per_token = flops_per_token(model, vocab, stage.seq_len)
        tokens = stage.steps * plan.batch_tokens
        total_flops += per_token * tokens
        if model.vision is not None:  # an upper bound: as if every token were an image token (one patch each)
            total_flops += model.vision.flops_per_image(model.d_model) * tokens / model.vision.n_patches
        autocast = spec.parallel.backend == "local"  # DeepSpeed holds 16-bit weights instead
        acts = {
            name: activation_bytes(model, vocab, stage.micro_batch, stage.seq_len, plan.precision, chosen, every_n, autocast=autocast)
            for name, chosen in (("none", "none"), ("full", "full"), ("chosen", policy))
        }
        largest = max(largest, acts["chosen"])
        stages.append(StageCost(stage.index, stage.seq_len, tokens, per_token, acts))
    kernel_saved = 0
    if model.kernels.cross_entropy != "standard":
        standard = model.model_copy(update={"kernels": Kernels()})
        kernel_saved = max(activation_bytes(standard, vocab, stage.micro_batch, stage.seq_len, plan.precision, policy, every_n,
                                            autocast=spec.parallel.backend == "local") for stage in plan.stages) - largest
    memory = {**device, "activations": largest}
    memory["total"] = sum(memory.values())
    if host:
        host = {**host, "total": sum(host.values())}
    notes = []
    available = DEVICE_MEMORY.get(device_type, DEVICE_MEMORY["cpu"])
    if memory["total"] > available:
        notes.append(f"{memory['total'] / 2**30:.1f} GiB per rank is more than the {available / 2**30:.0f} GiB of a {device_type} "
                     "rank: raise the ZeRO stage, offload, add ranks or checkpoint activations")
    if model.vision is not None:
        notes.append("the time counts the image encoder as if every token were an image token (an upper bound: caption tokens run no encoder)")
    peak = peak_flops if peak_flops is not None else default_peak_flops(device_type, plan.precision)
    tensor = spec.parallel.tensor.size if spec.parallel.backend == "fsdp" else 1  # plan.world_size: data-parallel ranks
    seconds = total_flops / (plan.world_size * tensor * peak * mfu)
    return Estimate(
        parameters=params,
        flops_per_token=flops_per_token(model, vocab, model.max_seq_len),
        flops_per_token_seq_len=model.max_seq_len,
        memory_per_rank=memory,
        host_memory_per_rank=host,
        stages=tuple(stages),
        total_flops=total_flops,
        peak_flops=peak,
        mfu=mfu,
        seconds=seconds,
        notes=tuple(notes),
        trainable=count_trainable(spec, vocab),
        memory_saved=saved,
        kernel_memory_saved=kernel_saved,
        vision_flops_per_image=model.vision.flops_per_image(model.d_model) if model.vision is not None else 0,
    )
