"""The `parallel:` section: one local process, DeepSpeed ZeRO across ranks, or PyTorch FSDP2 (with tensor
parallelism on a 2-D device mesh) across ranks launched by torchrun."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SpecModel, field_error


class Zero(SpecModel):
    stage: Literal[0, 1, 2, 3] = Field(
        default=0,
        description="ZeRO stage: 0 replicates everything; 1 shards optimizer state; 2 also gradients; 3 also parameters.",
    )
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state (and its step) in CPU memory (ZeRO 1-3).")
    offload_params: bool = Field(default=False, description="Keep parameters in CPU memory between uses (ZeRO 3 only).")

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> Zero:
        if self.offload_params and self.stage != 3:
            raise field_error("offload_params", f"offload_params needs ZeRO stage 3, found stage {self.stage}")
        if self.offload_optimizer and self.stage == 0:
            raise field_error("offload_optimizer", "offload_optimizer needs ZeRO stage 1, 2 or 3, found stage 0")
        return self


class Fsdp(SpecModel):
    reshard_after_forward: bool = Field(
        default=True,
        description="Free each block's gathered parameters after its forward and gather them again for the backward "
                    "(ZeRO-3-like memory); false keeps them until the backward (ZeRO-2-like, less communication).",
    )
    offload: bool = Field(default=False, description="Keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's CPUOffloadPolicy).")


class TensorParallel(SpecModel):
    size: int = Field(
        default=1, ge=1, le=4096,
        description="Ranks each attention layer's heads, MLP's hidden units and the vocabulary are split over "
                    "(PyTorch DTensor tensor parallelism, fsdp backend); world_size / size ranks shard the rest with FSDP2.",
    )


class Pipeline(SpecModel):
    stages: int = Field(
        default=1, ge=1, le=1024,
        description="Pipeline stages the layers (embedding, blocks, final norm, head) are split over (DeepSpeed's "
                    "PipelineModule, deepspeed backend); world_size / stages ranks are data parallel.",
    )
    micro_batches: int = Field(
        default=1, ge=1, le=65536,
        description="Micro-batches each pipeline step runs through the stages; must equal the plan's gradient "
                    "accumulation steps. The bubble (idle fraction) is (stages-1)/(micro_batches+stages-1).",
    )
    partition: Literal["parameters", "flops"] | list[int] = Field(
        default="parameters",
        description="Stage boundaries: balanced by parameters, by the plan's training FLOPs, or the index of the first "
                    "layer of each stage after the first (layers: 0 embedding, 1..n_layers the blocks, then final norm, head).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Pipeline:
        if isinstance(self.partition, list):
            if len(self.partition) != self.stages - 1:
                raise field_error("partition", f"{self.stages} stages need {self.stages - 1} boundary layer indices, found {len(self.partition)}")
            if any(b <= a for a, b in zip([0, *self.partition], self.partition)):
                raise field_error("partition", f"boundary layer indices must increase from 1: {self.partition}")
        return self


class Parallel(SpecModel):
    backend: Literal["local", "deepspeed", "fsdp"] = Field(
        default="local",
        description="local: one process on one device; deepspeed: ranks launched by DeepSpeed (ZeRO); "
                    "fsdp: ranks launched by torchrun, each block sharded by PyTorch FSDP2.",
    )
    world_size: int = Field(default=1, ge=1, le=2**20, description="Number of ranks (processes, at most 2**20); more than 1 needs the deepspeed or fsdp backend.")
    hostfile: str | None = Field(default=None, description="DeepSpeed hostfile for runs across nodes; null runs on this machine.")
    rendezvous: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.\-]+:\d{1,5}$",
        description="fsdp across nodes: torchrun's rendezvous endpoint HOST:PORT (node 0's address), which every node's "
                    "launcher joins; null runs on this machine.",
    )
    nodes: int = Field(default=1, ge=1, le=65536, description="fsdp across nodes: how many nodes (torchrun launchers) join the rendezvous; world_size counts the ranks of all of them.")
    fsdp: Fsdp = Field(default_factory=Fsdp, description="FSDP2 sharding policies (fsdp backend only).")
    tensor: TensorParallel = Field(default_factory=TensorParallel, description="Tensor parallelism (fsdp backend only).")
    zero: Zero = Field(default_factory=Zero, description="ZeRO sharding and offload (deepspeed only).")
    pipeline: Pipeline = Field(default_factory=Pipeline, description="Pipeline parallelism (deepspeed backend only).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 where the device computes it fast (most GPUs), fp32 on CPUs; fp16 uses loss scaling.",
    )
    activation_checkpointing: Literal["none", "full", "every_n"] = Field(
        default="none", description="Recompute activations in the backward pass to save memory: none, every block (full), or every n-th block."
    )
    checkpoint_every_n: int = Field(default=2, ge=1, description="With activation_checkpointing: every_n, checkpoint every this many blocks.")

    @model_validator(mode="after")
    def _deepspeed_only(self) -> Parallel:
        if self.backend == "local":
            if self.world_size > 1:
                raise field_error("world_size", f"world_size {self.world_size} needs backend: deepspeed (local runs one process)")
            # offload first: it is the more specific mistake (the stage alone would hide it)
            if self.zero.offload_optimizer or self.zero.offload_params:
                raise field_error(("zero", "offload_optimizer" if self.zero.offload_optimizer else "offload_params"), "offload needs backend: deepspeed")
            if self.zero.stage:
                raise field_error(("zero", "stage"), f"ZeRO stage {self.zero.stage} needs backend: deepspeed")
            if self.hostfile is not None:
                raise field_error("hostfile", "a hostfile needs backend: deepspeed")
        if self.pipeline.stages > 1:
            if self.backend != "deepspeed":
                raise field_error(("pipeline", "stages"), f"pipeline parallelism ({self.pipeline.stages} stages) needs backend: deepspeed")
            if self.zero.stage > 1:
                raise field_error(("zero", "stage"), f"ZeRO stage {self.zero.stage} cannot run with pipeline parallelism "
                                  "(DeepSpeed's pipeline engine allows ZeRO 0 or 1)")
            if self.world_size % self.pipeline.stages:
                raise field_error(("pipeline", "stages"), f"{self.pipeline.stages} stages must divide world_size {self.world_size}")
        elif self.pipeline != Pipeline():
            raise field_error("pipeline", "pipeline settings need parallel.pipeline.stages above 1")
        if self.backend != "fsdp":
            if self.tensor.size > 1:
                raise field_error(("tensor", "size"), f"tensor parallelism (size {self.tensor.size}) needs backend: fsdp")
            if self.fsdp != Fsdp():
                raise field_error("fsdp", "fsdp settings need backend: fsdp")
            if self.rendezvous is not None or self.nodes > 1:
                raise field_error("rendezvous" if self.rendezvous is not None else "nodes",
                                  "a torchrun rendezvous needs backend: fsdp (deepspeed crosses nodes with a hostfile)")
        else:
            if self.zero != Zero():
                raise field_error("zero", "ZeRO settings are DeepSpeed's: backend fsdp shards with FSDP2 (see parallel.fsdp)")
            if self.hostfile is not None:
                raise field_error("hostfile", "a hostfile is DeepSpeed's: backend fsdp crosses nodes with parallel.rendezvous")
            if self.world_size % self.tensor.size:
                raise field_error(("tensor", "size"), f"tensor size {self.tensor.size} must divide world_size {self.world_size}")
            if self.world_size % self.nodes:
                raise field_error("nodes", f"{self.nodes} nodes must divide world_size {self.world_size} (the same ranks on each)")
            if self.nodes > 1 and self.rendezvous is None:
                raise field_error("rendezvous", f"{self.nodes} nodes need a rendezvous endpoint HOST:PORT")
        return self
