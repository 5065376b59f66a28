"""The `parallel:` section: one local process, or DeepSpeed ZeRO across ranks."""

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


class Parallel(SpecModel):
    backend: Literal["local", "deepspeed"] = Field(
        default="local", description="local: one process on one device; deepspeed: ranks launched by DeepSpeed."
    )
    world_size: int = Field(default=1, ge=1, le=2**20, description="Number of ranks (processes, at most 2**20); more than 1 needs the deepspeed backend.")
    hostfile: str | None = Field(default=None, description="DeepSpeed hostfile for runs across nodes; null runs on this machine.")
    zero: Zero = Field(default_factory=Zero, description="ZeRO sharding and offload (deepspeed only).")
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
        return self
