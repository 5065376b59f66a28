"""The DeepSpeed engine: the loop's `Engine` contract (runtime/engine.py) over `deepspeed.initialize`.

Every rank builds one. The loop keeps control of what tabula decides: the learning rate (set into the
optimizer's groups each step from the token-driven schedule), gradient accumulation (the loop calls
`forward_backward` `accum_steps` times, then `step`; the accumulation boundary is set explicitly, so
curriculum stages with another micro-batch count need no new engine) and checkpoints (written into
the loop's atomic checkpoint folder):

    checkpoints/step-000500/
      model.safetensors        consolidated fp32 weights (rank 0), as a local run writes them
      deepspeed/layout.json    ZeRO stage, world size, precision and parameter names it was saved with
      deepspeed/state/         DeepSpeed's sharded checkpoint (saved with universal-checkpoint info)
      deepspeed/universal-*/   written by runtime/reshard.py when a resume changes world size or stage
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from .engine import WEIGHTS_FILE, eval_mode, greedy_continuation, images_to, set_lr, to_device
from .reshard import DS_DIR, LAYOUT_FILE, TAG

# what gloo / NCCL say when the rank at the other end of a collective has gone
LOST_PEER = re.compile(r"Connection closed by peer|Connection reset|Broken pipe|timed out|Timeout|NCCL communicator was aborted", re.I)
# the optimizer hyperparameters tabula owns per group: restored after every load, because DeepSpeed's
# ZeRO-3 universal loader copies group 0's values (weight decay included) into every group
GROUP_KEYS = ("name", "weight_decay", "betas", "eps", "momentum", "nesterov", "lr_scale")


def init_distributed(timeout_minutes: float = 10.0) -> None:
    """Join the process group the DeepSpeed launcher set up (env: RANK, WORLD_SIZE, MASTER_ADDR ...):
    NCCL on GPUs, gloo on CPUs. A collective that waits longer than the timeout fails instead of hanging."""
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    _skip_shared_memory_op()
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))


def _skip_shared_memory_op() -> None:
    """DeepSpeed's CPU accelerator compiles its shared-memory all-reduce (C++, about 2.5 minutes on a
    machine's first run) when the process group starts. Only its `inference_all_reduce` uses it; training's
    collectives (ZeRO, pipeline) go through torch.distributed, so a training run never needs it. Without
    the op DeepSpeed takes its own fallback: the process group's all-reduce."""
    import importlib

    # by its full name: the package `deepspeed.comm` re-exports the torch library under the same name
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_torch, "build_shm_op"):  # deepspeed 0.19's hook; a version without it builds as it likes
        setattr(ds_torch, "build_shm_op", lambda: None)


def rank_device() -> torch.device:
    """This rank's device: its local GPU, or the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


class RankFailed(RuntimeError):
    """Another rank failed (its own error in the message) or stopped answering."""


def collective(method):
    """A failure inside a call every rank makes together is most often another rank's failure seen from
    here: name that rank and its error (from the run folder's ranks/ files) instead of a socket error."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            peer = self.peer_failure(error)
            if peer is None:
                raise
            raise RankFailed(peer) from error

    return wrapper


class DeepSpeedEngine:
    """One rank of a DeepSpeed run. `model` is materialized on `device` in fp32; `optimizer` is a torch
    optimizer over tabula's parameter groups, or None when `config` names DeepSpeed's own ("optimizer"
    section, e.g. its CPU Adam under offload); `config` is the plan's DeepSpeed config dict."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, config: dict, *,
                 device: torch.device, precision: str, param_groups: list[dict] | None = None) -> None:
        import deepspeed
        import deepspeed.comm as dist

        self._dist = dist
        config = dict(config)
        # tabula's optimizers besides AdamW (Lion, Adafactor, SGD) are "untested" to ZeRO but work
        config.setdefault("zero_allow_untested_optimizer", True)
        self.config = config
        self.stage = int(config.get("zero_optimization", {}).get("stage", 0))
        self.precision = precision
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.names = {id(p): n for n, p in model.named_parameters()}
        groups = optimizer.param_groups if optimizer is not None else (param_groups or [{"params": list(model.parameters())}])
        # per group: the hyperparameters and parameter names (in order) it was built with; read before
        # deepspeed.initialize, which replaces ZeRO groups' parameters by flat shards
        self.group_settings = [{k: g[k] for k in GROUP_KEYS if k in g} for g in groups]
        self.group_names = [[self.names[id(p)] for p in g["params"]] for g in groups]
        if optimizer is not None:
            self.ds, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        else:
            self.ds, self.optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
        self.model = self.ds.module
        self._micro = 0
        self.errors_dir: Path | None = None  # the run folder's ranks/: where a failing rank leaves its error

    def peer_failure(self, error: Exception, wait_s: float = 3.0) -> str | None:
        """The error another rank reported (waiting briefly for it to land), a line saying a rank went
        silent when `error` is a lost connection, or None when the failure is this rank's own."""
        if self.errors_dir is not None and self.world_size > 1:
            deadline = time.monotonic() + wait_s
            mine = f"rank-{self.rank}.error"
            while True:
                found = sorted(p for p in self.errors_dir.glob("rank-*.error") if p.name != mine)
                if found:
                    return found[0].read_text(encoding="utf-8").strip().splitlines()[0]
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
        lost = LOST_PEER.search(str(error))
        if lost:
            return (f"another rank stopped answering ({lost.group(0).lower()} in a collective): it exited or was "
                    f"killed without reporting an error; the launcher's output names it")
        return None

    # ------------------------------------------------------------------ training

    @collective
    def forward_backward(self, input_ids, targets, document_ids, accum_steps, images=None):
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        self._micro += 1
        boundary = self._micro >= accum_steps
        # set before the backward: ZeRO reduces (and stage 2 partitions) gradients at the boundary
        self.ds.set_gradient_accumulation_boundary(boundary)
        _, loss = self.ds(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
        self.ds.backward(loss / accum_steps, scale_wrt_gas=False)
        if boundary:
            self._micro = 0
        return loss.detach().float()

    @collective
    def step(self, lr):
        set_lr(self.ds.optimizer.param_groups, lr)
        if self.stage == 0 and self.precision == "fp32":
            # plain DeepSpeed (no ZeRO, fp32) neither reports the norm nor refuses a non-finite update:
            # the gradients are already all-reduced at the boundary, so measure them here
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            if not torch.isfinite(norm):
                self.ds.zero_grad()
                return norm.detach()
            self.ds.step()
            return norm.detach()
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32).to(self.device)
        if not self.ds.was_step_applied():
            # fp16 overflow is routine (the loss scale drops): a finite norm, as the local engine reports
            return torch.zeros((), device=self.device) if self.precision == "fp16" else torch.full((), float("nan"), device=self.device)
        return norm

    @collective
    @torch.no_grad()
    def evaluate(self, input_ids, targets, document_ids, images=None):
        input_ids, targets, document_ids = to_device(self.device, input_ids, targets, document_ids)
        with eval_mode(self.model):
            _, loss = self.ds(input_ids, targets, document_ids=document_ids, **images_to(self.device, images))
        return loss.detach().float()

    @collective
    def generate(self, prompt_ids, max_new_tokens):
        # every rank generates the same tokens (ZeRO-3 gathers each layer's weights collectively, around the
        # model's own forward: the uncached reference; stages 0-2 keep whole weights and take the cache)
        return greedy_continuation(self.model, prompt_ids, max_new_tokens, self.device, cached=self.stage < 3)

    # ------------------------------------------------------------------ state

    def layout(self) -> dict:
        return {"zero_stage": self.stage, "world_size": self.world_size, "precision": self.precision,
                "groups": self.group_names}

    @collective
    def save(self, checkpoint_dir):
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        from .checkpoint import save_weights, saved_names, weights_metadata

        folder = Path(checkpoint_dir) / DS_DIR
        names = saved_names(self.model)  # under a fine-tuning method with a frozen base: the trained parameters alone
        # the universal-checkpoint info is what lets ds_to_universal convert this checkpoint later
        self.ds.save_checkpoint(str(folder), tag=TAG, client_state={UNIVERSAL_CHECKPOINT_INFO: {}}, save_latest=False,
                                exclude_frozen_parameters=names is not None)
        weights = self.consolidated_state_dict(names)
        if self.is_main:
            save_weights(weights, Path(checkpoint_dir) / WEIGHTS_FILE, weights_metadata(self.model))
            with open(folder / LAYOUT_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.layout(), handle, indent=1)
        self.barrier()

    @collective
    def load(self, checkpoint_dir):
        from . import reshard

        from .checkpoint import check_finetune, saved_names

        folder = Path(checkpoint_dir) / DS_DIR
        check_finetune(self.model, Path(checkpoint_dir) / WEIGHTS_FILE)  # the same method over the same base
        saved = reshard.read_layout(Path(checkpoint_dir))
        if saved.get("pipeline_stages", 1) > 1:
            raise reshard.ReshardError(f"{checkpoint_dir}: a pipeline checkpoint ({saved['pipeline_stages']} stages) resumes on "
                                       "the same pipeline or on the local engine, not on ZeRO ranks")
        move = reshard.describe_move(saved, self.stage, self.world_size)
        if not move.changes:
            # a fine-tuning checkpoint holds no frozen parameter: the base is the one built from the spec
            self.ds.load_checkpoint(str(folder), tag=TAG, load_lr_scheduler_states=False,
                                    load_module_strict=saved_names(self.model) is None)
        else:
            universal = reshard.universal_folder(Path(checkpoint_dir))
            if not universal.is_dir():
                raise RuntimeError(f"{checkpoint_dir}: {move.text}, but no universal checkpoint was prepared for it "
                                   f"(runtime/reshard.py prepare_resume runs before the ranks start)")
            if self.stage == 0:
                reshard.load_universal_plain(self, universal)
            else:
                self.ds._config.load_universal_checkpoint = True
                try:
                    self.ds.load_checkpoint(str(folder), tag=universal.name, load_lr_scheduler_states=False)
                finally:
                    self.ds._config.load_universal_checkpoint = False
                if self.stage == 3:
                    _refresh_persistent(self.ds.optimizer)
                    _untie_steps(self.ds.optimizer.optimizer)
        for group, settings in zip(self.ds.optimizer.param_groups, self.group_settings):
            group.update(settings)
        self._micro = 0

    @collective
    def consolidated_state_dict(self, names=None):
        """Full fp32 weights keyed like `model.state_dict()` on rank 0 ({} elsewhere); `names`: only these
        entries (the others are not gathered). Collective: under ZeRO each parameter's fp32 master copy is
        gathered from its shards; a frozen parameter has none, ZeRO-3 gathers its partitions."""
        from deepspeed.utils import safe_get_full_fp32_param
        from deepspeed.runtime.zero import GatheredParameters

        gathered: dict[int, torch.Tensor] = {}
        out = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if names is not None and name not in names:
                continue
            key = id(tensor)
            if key not in gathered:
                full = safe_get_full_fp32_param(tensor) if isinstance(tensor, nn.Parameter) else None
                if full is None and hasattr(tensor, "ds_id"):  # a frozen ZeRO-3 parameter: gather its partitions
                    with GatheredParameters([tensor]):
                        full = tensor.detach().clone()
                gathered[key] = (tensor if full is None else full).detach().to("cpu", torch.float32)
            out[name] = gathered[key]  # tied names share one tensor: stored once, the other as an alias
        return out if self.is_main else {}

    # ------------------------------------------------------------------ collectives

    @collective
    def barrier(self):
        self._dist.barrier()

    @collective
    def reduce_mean(self, value):
        total = value.detach().clone().float()
        self._dist.all_reduce(total)
        return total / self.world_size

    @collective
    def sync_flags(self, flags):
        bits = torch.tensor([(flags >> i) & 1 for i in range(8)], dtype=torch.int32, device=self.device)
        self._dist.all_reduce(bits, op=self._dist.ReduceOp.MAX)
        return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def _refresh_persistent(optimizer) -> None:
    """ZeRO-3 keeps small ("persistent") parameters whole on every rank. Its universal loader updates
    their shards but not the whole copies the forward reads (its native loader re-partitions and
    re-gathers them): do that here, or the forward runs on the stale values."""
    persistent = optimizer.persistent_parameters
    if persistent:
        persistent[0].partition(persistent)
        persistent[0].all_gather(persistent)


def _untie_steps(optimizer: torch.optim.Optimizer) -> None:
    """ZeRO-3's universal loader gives every parameter group the same `step` tensor object; a foreach
    optimizer then increments it once per group each step (the bias correction runs ahead): copy it."""
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()
