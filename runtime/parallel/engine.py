"""The FSDP2 engine: the loop's `Engine` contract (runtime/engine.py) over a model sharded by
runtime/parallel/fsdp.py (and, with tensor parallelism, runtime/parallel/tensor.py) on a (dp, tp) mesh.

The loop slices each global batch by `rank` / `world_size`, which here are the data-parallel rank and
size: the ranks of one tensor-parallel group read the same sequences. Checkpoints:

    checkpoints/step-000500/
      model.safetensors     consolidated fp32 weights (rank 0), as a local run writes them
      fsdp/layout.json      world size, tensor size, precision and parameter names by optimizer group
      fsdp/state/           torch.distributed.checkpoint: every rank's shards of model and optimizer state,
                            which any world size / tensor size loads (DCP reshards natively)

A checkpoint without fsdp/ (a local one, or a DeepSpeed one made local by runtime/reshard.py) loads
from its consolidated weights and optimizer.pt; runtime/parallel/convert.py writes optimizer.pt from
fsdp/ for the local and DeepSpeed engines.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from ..deepspeed_engine import RankFailed, collective  # a rank's failure named the same way on every backend
from ..engine import WEIGHTS_FILE, eval_mode, greedy_continuation, images_to, set_lr, to_device

FSDP_DIR = "fsdp"
STATE_DIR = "state"
LAYOUT_FILE = "layout.json"


class FsdpEngine:
    """One rank of an fsdp run. `model` is already sharded (parallel.fsdp.apply_fsdp) over `mesh`'s "dp"
    dimension (and split over "tp"); `optimizer` was built over its sharded parameters."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, mesh, device: torch.device,
                 precision: str, grad_clip: float | None) -> None:
        self.model: Any = model  # the sharded Transformer (fully_shard swaps its class in place)
        self.optimizer = optimizer
        self.mesh = mesh
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip
        self.tensor = mesh["tp"].size()
        self.rank = mesh["dp"].get_local_rank()  # the loop's slice of the batch: data-parallel rank
        self.world_size = mesh["dp"].size()
        self.global_rank, self.global_world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.global_rank == 0
        names = {id(p): n for n, p in model.named_parameters()}
        self.group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._micro = 0
        self.errors_dir: Path | None = None  # the run folder's ranks/: where a failing rank leaves its error

    def _loss_context(self):
        if self.tensor > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()  # cross-entropy over vocabulary-sharded logits, never gathered
        return contextlib.nullcontext()

    def peer_failure(self, error: Exception, wait_s: float = 3.0) -> str | None:
        """Another rank's reported error, or a line saying one went silent, or None (DeepSpeedEngine's)."""
        from ..deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine.peer_failure(cast(Any, self), error, wait_s)

    # ------------------------------------------------------------------ training

    @collective
    def forward_backward(self, input_ids, targets, document_ids, accum_steps, images=None):
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        self._micro += 1
        boundary = self._micro >= accum_steps
        # reduce-scatter the gradients once per optimizer step, at the last micro-batch
        self.model.set_requires_gradient_sync(boundary)
        with self._loss_context():  # bf16: FSDP2's mixed-precision policy casts (no autocast)
            _, loss = self.model(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
            (loss / accum_steps).backward()
        if boundary:
            self._micro = 0
        return _local(loss).detach().float()

    @collective
    def step(self, lr):
        set_lr(self.optimizer.param_groups, lr)
        norm = grad_norm(self._params)
        if torch.isfinite(norm):  # every rank holds the same norm: all apply the update, or none
            if self.grad_clip is not None and float(norm) > self.grad_clip:
                scale = self.grad_clip / (float(norm) + 1e-6)
                for p in self._params:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    @collective
    @torch.no_grad()
    def evaluate(self, input_ids, targets, document_ids, images=None):
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        with eval_mode(self.model), self._loss_context():
            _, loss = self.model(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
        return _local(loss).detach().float()

    @collective
    def generate(self, prompt_ids, max_new_tokens):
        # every rank generates the same tokens (each block gathers its weights collectively)
        if self.tensor > 1:  # the head's logits are vocabulary-sharded: gathered for each argmax
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            window = self.model.max_seq_len - self.model.n_virtual
            with torch.no_grad(), eval_mode(self.model):
                for _ in range(max_new_tokens):
                    logits = _local(self.model(ids[:, -window:]))  # (1, T, vocab)
                    ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
            new_ids: list[int] = ids[0, len(prompt_ids):].tolist()
            return new_ids
        # uncached: FSDP2 gathers each block's weights around its own forward, which the cached decoder
        # (runtime/inference) does not call (it runs the attention's projections itself)
        return greedy_continuation(self.model, prompt_ids, max_new_tokens, self.device, cached=False)

    # ------------------------------------------------------------------ state

    def layout(self) -> dict:
        return {"backend": "fsdp", "world_size": self.global_world, "tensor": self.tensor, "precision": self.precision,
                "groups": self.group_names}

    @collective
    def save(self, checkpoint_dir):
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

        from ..checkpoint import save_weights, saved_names, weights_metadata

        folder = Path(checkpoint_dir) / FSDP_DIR
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / STATE_DIR))
        weights = self.consolidated_state_dict(saved_names(self.model))
        if self.is_main:
            save_weights(weights, Path(checkpoint_dir) / WEIGHTS_FILE, weights_metadata(self.model))
            with open(folder / LAYOUT_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.layout(), handle, indent=1)
        self.barrier()

    @collective
    def load(self, checkpoint_dir):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        from ..engine import OPTIMIZER_FILE

        checkpoint_dir = Path(checkpoint_dir)
        if (checkpoint_dir / FSDP_DIR / STATE_DIR).is_dir():
            from torch.distributed.checkpoint.state_dict import get_state_dict
            from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            state: dict[str, Any] = {"model": model_state, "optim": optim_state}
            dcp_load(state, checkpoint_id=str(checkpoint_dir / FSDP_DIR / STATE_DIR))  # any world size: resharded
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:  # the local format: consolidated weights + torch's optimizer state numbered in group order
            from ..checkpoint import read_weights

            weights = read_weights(checkpoint_dir / WEIGHTS_FILE)
            saved = torch.load(checkpoint_dir / OPTIMIZER_FILE, map_location="cpu", weights_only=True)["optimizer"]
            set_state_dict(self.model, self.optimizer, model_state_dict=cast(Any, weights),
                           optim_state_dict=_named_optimizer_state(saved, self.group_names),
                           options=StateDictOptions(full_state_dict=True))
        self._micro = 0

    @collective
    def consolidated_state_dict(self, names=None):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        out = {n: cast(torch.Tensor, t).detach().to("cpu", torch.float32) for n, t in full.items()
               if names is None or n in names}
        if getattr(self.model, "tie_embeddings", False) and "lm_head.weight" in out and "embed.weight" in out:
            out["lm_head.weight"] = out["embed.weight"]  # one tensor: stored once, the head as an alias
        return out

    # ------------------------------------------------------------------ collectives

    @collective
    def barrier(self):
        dist.barrier()

    @collective
    def reduce_mean(self, value):
        total = value.detach().clone().float()
        dist.all_reduce(total)
        return total / self.global_world  # tensor-parallel ranks hold the same value: the mean is unchanged

    @collective
    def sync_flags(self, flags):
        bits = torch.tensor([(flags >> i) & 1 for i in range(8)], dtype=torch.int32, device=self.device)
        dist.all_reduce(bits, op=dist.ReduceOp.MAX)
        return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def _local(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's value as a plain tensor (a replicated loss under tensor parallelism), else itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients of sharded parameters, on the device: per mesh, the norm of
    that mesh's DTensor gradients (a partial sum, completed by full_tensor), then combined."""
    from torch.distributed.tensor import DTensor

    by_mesh: dict[object, list[torch.Tensor]] = {}
    plain: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            by_mesh.setdefault(p.grad.device_mesh, []).append(p.grad)
        else:
            plain.append(p.grad)
    squares = []
    for grads in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(grads)
        squares.append(_local(norm).float() ** 2)
    if plain:
        squares.append(torch.nn.utils.get_total_norm(plain).float() ** 2)
    if not squares:
        return torch.zeros(())
    return torch.stack([s.reshape(()) for s in squares]).sum().sqrt()


def _named_optimizer_state(saved: dict, group_names: list[list[str]]) -> dict:
    """torch's optimizer state dict (parameters numbered in group order) keyed by parameter name, as
    torch.distributed.checkpoint's state-dict functions take it."""
    flat = [name for names in group_names for name in names]
    state = {flat[int(index)]: value for index, value in saved["state"].items()}
    groups = []
    for names, group in zip(group_names, saved["param_groups"]):
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(names)})
    return {"state": state, "param_groups": groups}
