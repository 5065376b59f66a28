"""`model.kernels`: which implementation computes the loss and a few hot operations.

Each choice computes the same function as the reference (`standard` / `torch`), within fp32
tolerance forward and backward (tests/compiler/test_kernels.py); what changes is memory and speed.
`chunked` runs on every device; `liger` runs Liger Kernel's Triton kernels, on CUDA GPUs only
(the plan refuses them elsewhere: `Kernels.device_problems`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import SpecModel

LIGER = "liger"


class Kernels(SpecModel):
    """The implementation of the loss, the norms, RoPE and SwiGLU's gate."""

    cross_entropy: Literal["standard", "chunked", "liger"] = Field(
        default="standard",
        description="The output projection and cross-entropy. standard: the full (tokens x vocab) logits, then the loss. "
        "chunked: projection and loss a chunk of tokens at a time, recomputed in the backward, so the logits of all tokens "
        "never exist at once (plain PyTorch, every device). liger: Liger Kernel's fused linear cross-entropy (CUDA). "
        "With chunked or liger, a forward given targets returns no logits, only the loss.",
    )
    chunk_tokens: int = Field(
        default=1024, gt=0,
        description="Tokens a chunk of chunked cross-entropy projects at once: its logits are chunk_tokens x vocab "
        "(fp32: 4 bytes each, twice in the backward).",
    )
    rmsnorm: Literal["torch", "liger"] = Field(default="torch", description="RMSNorm: torch's F.rms_norm, or Liger Kernel's (CUDA).")
    rope: Literal["torch", "liger"] = Field(
        default="torch", description="Rotary embeddings of mha/gqa/mqa queries and keys: torch, or Liger Kernel's (CUDA)."
    )
    swiglu: Literal["torch", "liger"] = Field(
        default="torch", description="SwiGLU's silu(gate) * up: torch, or Liger Kernel's fused kernel (CUDA)."
    )

    @property
    def liger(self) -> tuple[str, ...]:
        """The fields that choose Liger Kernel."""
        return tuple(name for name in type(self).model_fields if getattr(self, name) == LIGER)

    def device_problems(self, device_type: str) -> list[tuple[str, str]]:
        """(field, message) for each choice the device cannot run: Liger Kernel needs CUDA."""
        if device_type == "cuda":
            return []
        return [(name, f"liger runs Liger Kernel's Triton kernels on CUDA GPUs only; this run's device is {device_type}: "
                       f"choose {'standard or chunked' if name == 'cross_entropy' else 'torch'}") for name in self.liger]
