"""The engine: what the train loop needs from whatever runs the model (one process, or DeepSpeed ranks).

The loop (runtime/loop.py) calls only the members of `Engine` below, so a new backend is one class.
`LocalEngine` runs one process on one device (CUDA when present, else the CPU); DeepSpeed's engine
lives in runtime/deepspeed_engine.py and keeps the same contract.

Collectives (`evaluate`, `generate`, `save`, `load`, `consolidated_state_dict`, `barrier`,
`reduce_mean`, `sync_flags`) are called by every rank in the same order; the local engine's are trivial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from tabula.schemas.rundir_protocol import WEIGHTS_FILE

if TYPE_CHECKING:
    from tabula.compiler.model import Transformer
    from tabula.compiler.vision import ImageInput

OPTIMIZER_FILE = "optimizer.pt"


@runtime_checkable
class Engine(Protocol):
    """What the train loop drives. Every tensor returned stays on the device (no host sync)."""

    model: Transformer  # the plain module (unwrapped): hooks, generate, parameter counts
    device: torch.device
    rank: int
    world_size: int
    is_main: bool  # rank 0: the only rank that writes events, Aim and console lines
    precision: str  # "fp32" | "bf16" | "fp16" (resolved by the plan)

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, document_ids: torch.Tensor | None, accum_steps: int,
        images: ImageInput | None = None,
    ) -> torch.Tensor:
        """One micro-batch `(B, T)` (CPU tensors; the engine moves them): forward, loss / accum_steps backward.
        `images`: the micro-batch's images (model.vision; data/image_batches.py image_rows).
        Returns the micro-batch's unscaled mean loss, detached, on the device."""
        ...

    def step(self, lr: float) -> torch.Tensor:
        """Ends an optimizer step: set lr, clip, update, zero the gradients. Returns the gradient norm
        (before clipping) on the device. A non-finite norm means the update was NOT applied (the
        gradients are still zeroed); the loop decides what the spec's `on_nonfinite` policy does next."""
        ...

    def evaluate(self, input_ids: torch.Tensor, targets: torch.Tensor, document_ids: torch.Tensor | None,
                 images: ImageInput | None = None) -> torch.Tensor:
        """Mean loss of one batch without gradients (model in eval mode for the call), on the device."""
        ...

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of `prompt_ids` (the new tokens only)."""
        ...

    def save(self, checkpoint_dir: Path) -> None:
        """Write model and optimizer state (whatever `load` needs) into an existing folder; rank 0 also
        writes the consolidated weights as `WEIGHTS_FILE` (checkpoint.save_weights), which
        `tabula.load_model` and `tabula export` read: under a fine-tuning method that froze part of the
        model, the trainable parameters alone (`checkpoint.saved_names`, `weights_metadata`). Collective."""
        ...

    def load(self, checkpoint_dir: Path) -> None:
        """Restore what `save` wrote, exactly (bit-identical continuation on the CPU)."""
        ...

    def consolidated_state_dict(self, names: set[str] | None = None) -> dict[str, torch.Tensor]:
        """The full model weights on the CPU, keyed like `model.state_dict()` (empty on ranks other than 0);
        `names`: only these entries (the others are not gathered)."""
        ...

    def barrier(self) -> None: ...

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a device tensor over ranks."""
        ...

    def sync_flags(self, flags: int) -> int:
        """Bitwise OR of small integer flags over ranks (stop / checkpoint / eval requests)."""
        ...


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for the forward, or nothing for fp32 (weights always stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(device: torch.device, input_ids: torch.Tensor, targets: torch.Tensor,
              document_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch's tensors on `device` (copied without waiting); no document ids stay None."""
    return (input_ids.to(device, non_blocking=True), targets.to(device, non_blocking=True),
            None if document_ids is None else document_ids.to(device, non_blocking=True))


def images_to(device: torch.device, images: ImageInput | None) -> dict[str, ImageInput]:
    """The model's `images` keyword for a micro-batch's images, on `device`; none without images."""
    return {} if images is None else {"images": images.to(device)}


def set_lr(param_groups: list[dict], lr: float) -> None:
    """The schedule's `lr` into every optimizer group, times the group's `lr_scale` (default 1)."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode inside the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def greedy_continuation(model: Transformer, prompt_ids: list[int], max_new_tokens: int, device: torch.device,
                        autocast: contextlib.AbstractContextManager[Any] | None = None, *, cached: bool = True) -> list[int]:
    """The greedy continuation of `prompt_ids` in eval mode, without gradients: the new token ids only
    (runtime/inference's cached Generator; past the context each token is recomputed from the last
    max_seq_len ids, as the uncached sample did). `cached` False: the uncached reference (every token
    recomputed through the model's own forward), for engines that gather weights around module calls."""
    from .inference import greedy_ids
    from .inference.reference import recompute_greedy

    with torch.no_grad(), eval_mode(model), autocast or contextlib.nullcontext():
        if cached:
            return greedy_ids(model, prompt_ids, max_new_tokens)
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        new_ids: list[int] = recompute_greedy(model, prompt, max_new_tokens)[0, len(prompt_ids):].tolist()
        return new_ids


class LocalEngine:
    """One process, one device. `model` must already be materialized on `device` (compiled in place or
    not: runtime/build.py builds it); its state dict is what checkpoints save."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(
        self,
        model: Transformer,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        precision: str,
        grad_clip: float | None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self._params = [p for p in model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ training

    def forward_backward(self, input_ids: torch.Tensor, targets: torch.Tensor, document_ids: torch.Tensor | None,
                         accum_steps: int, images: ImageInput | None = None) -> torch.Tensor:
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        with autocast_for(self.device, self.precision):
            _, loss = self.model(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
        scaled = loss / accum_steps
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        return loss.detach()

    def step(self, lr: float) -> torch.Tensor:
        set_lr(self.optimizer.param_groups, lr)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if self.scaler is not None:
            # fp16: the scaler skips the update on overflow and lowers its scale; overflow is routine
            # there, so it reports a finite norm and the non-finite policy sees only real divergence.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
        elif torch.isfinite(grad_norm):  # one scalar sync per optimizer step: never apply a non-finite update
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach()

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor, targets: torch.Tensor, document_ids: torch.Tensor | None,
                 images: ImageInput | None = None) -> torch.Tensor:
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        with eval_mode(self.model), autocast_for(self.device, self.precision):
            _, loss = self.model(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
        return loss.detach().float()

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        return greedy_continuation(self.model, prompt_ids, max_new_tokens, self.device,
                                   autocast_for(self.device, self.precision))

    # ------------------------------------------------------------------ state

    def save(self, checkpoint_dir: Path) -> None:
        from .checkpoint import save_weights, saved_names, weights_metadata

        weights = self.consolidated_state_dict(saved_names(self.model))
        save_weights(weights, Path(checkpoint_dir) / WEIGHTS_FILE, weights_metadata(self.model))
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, Path(checkpoint_dir) / OPTIMIZER_FILE)

    def load(self, checkpoint_dir: Path) -> None:
        from .checkpoint import load_weights

        load_weights(self.model, Path(checkpoint_dir) / WEIGHTS_FILE)
        state = torch.load(Path(checkpoint_dir) / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def consolidated_state_dict(self, names: set[str] | None = None) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().to("cpu") for name, tensor in self.model.state_dict().items() if names is None or name in names}

    # ------------------------------------------------------------------ collectives (one rank: trivial)

    def barrier(self) -> None:
        pass

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def sync_flags(self, flags: int) -> int:
        return flags
