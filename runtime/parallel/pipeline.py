"""Pipeline parallelism through DeepSpeed: the plain model lowered to a `PipelineModule`, and the loop's
`Engine` contract (runtime/engine.py) over DeepSpeed's `PipelineEngine`.

    pipeline_module(model, bounds) -> PipelineModule    embedding, blocks, final norm, head as LayerSpecs
    PipelineDeepSpeedEngine(model, module, optimizer, config, ...)

The layers are the plain Transformer's own modules, wrapped (every rank builds the whole model with the
spec's seed, so every stage starts from the weights a local run starts from); a stage keeps the layers
between the plan's boundaries (compiler/pipeline_plan.py, passed as DeepSpeed's `parts`). A tied
embedding and head is one `TiedLayerSpec` on the first and last stage, whose gradients DeepSpeed adds.

DeepSpeed's `train_batch` runs forward, backward and the optimizer step of all micro-batches at once,
while the loop hands micro-batches one at a time and the learning rate after them. So the engine keeps
the micro-batches, runs `train_batch` at the last one with DeepSpeed's optimizer step held back, and
takes that step in `step(lr)` (lr set, gradient norm over every stage, clipping as the local engine
clips). The step's mean loss comes back from the last micro-batch (times the micro-batch count; the
others return 0), so the loop's sum / grad_accum is the step's loss. Document masking is not lowered
(the stages pass one activation tensor).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ..deepspeed_engine import DeepSpeedEngine, collective
from ..engine import greedy_continuation, set_lr


class EmbedPipe(nn.Module):
    """Token embedding and positions: input ids (B, T) -> (B, T, C); as the tied head: (B, T, C) -> logits."""

    def __init__(self, embed: nn.Embedding, pos_embed: nn.Module) -> None:
        super().__init__()
        self.embed = embed
        self.pos_embed = pos_embed if any(True for _ in pos_embed.parameters()) else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)  # (B, T, C)
        if self.pos_embed is not None:  # learned positions; RoPE is applied in each block
            x, _ = self.pos_embed(x)
        return x


def tied_head(module: EmbedPipe, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, module.embed.weight)  # (B, T, vocab)


class BlockPipe(nn.Module):
    """One block: (B, T, C) -> (B, T, C), with RoPE's tables and the causal (or windowed) mask made here."""

    def __init__(self, block: nn.Module, pos_embed: nn.Module, mask) -> None:
        super().__init__()
        self.block = block
        # RoPE holds buffers only: each stage keeps its own; learned positions were added by the embedding
        self.rope = pos_embed if not any(True for _ in pos_embed.parameters()) else None
        self.mask = mask  # the plain model's attention_mask (a bound method, not a module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rope = self.rope(x)[1] if self.rope is not None else None
        return self.block(x, rope, self.mask(x.size(1), None, x.device), None)


class Wrap(nn.Module):
    """The final norm, or an untied head: one module applied to the activations."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def layer_specs(model) -> list:
    """The plain model's layers in pipeline order (compiler/pipeline_plan.pipeline_layers' order)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if model.virtual_tokens is not None:
        raise ValueError("prompt or prefix tuning's virtual tokens are not lowered to pipeline stages")
    if model.tie_embeddings:
        first = TiedLayerSpec("embed", EmbedPipe, model.embed, model.pos_embed, tied_weight_attr=["embed.weight"])
        last = TiedLayerSpec("embed", EmbedPipe, model.embed, model.pos_embed, forward_fn=tied_head,
                             tied_weight_attr=["embed.weight"])
    else:
        first, last = LayerSpec(EmbedPipe, model.embed, model.pos_embed), LayerSpec(Wrap, model.lm_head)
    blocks = [LayerSpec(BlockPipe, block, model.pos_embed, model.attention_mask) for block in model.blocks]
    return [first, *blocks, LayerSpec(Wrap, model.norm), last]


def pipeline_module(model, bounds: list[int]):
    """The DeepSpeed PipelineModule of `model` with stage boundaries `bounds` (len stages + 1)."""
    from deepspeed.pipe import PipelineModule

    class Staged(PipelineModule):
        def _partition_layers(self, method="uniform"):
            stage = self._topo.get_coord(self.global_rank).pipe
            self.parts = list(bounds)
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model.loss_fn(logits, targets)

    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints its seed settings and topology
        return Staged(layers=layer_specs(model), num_stages=len(bounds) - 1, loss_fn=loss_fn, dynamic_shape=True)


class PipelineDeepSpeedEngine(DeepSpeedEngine):
    """One rank of a pipeline-parallel DeepSpeed run: `module` is `pipeline_module(model, ...)`, `model` the
    plain Transformer it wraps (the loop's `engine.model`), `optimizer` over `module`'s parameters."""

    def __init__(self, model, module, optimizer, config: dict, *, device, precision: str, grad_clip: float | None) -> None:
        super().__init__(module, optimizer, config, device=device, precision=precision)
        self.pipe_module = module
        self.model = model
        self.grad_clip = grad_clip
        grid = self.ds.grid
        self.stage_id, self.stages = self.ds.stage_id, self.ds.num_stages
        # the loop slices each step's sequences by data-parallel rank: the ranks of a pipeline share theirs
        self.rank, self.world_size = grid.get_data_parallel_rank(), grid.get_data_parallel_world_size()
        self.processes = self._dist.get_world_size()  # every rank: what the loop's collective decisions count
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._take_step = self.ds._take_model_step
        self.ds._take_model_step = lambda *args, **kwargs: None  # taken in step(lr), after the loop sets lr
        owned = {id(p) for p in module.parameters()}
        self.owned_names = [n for n, p in model.named_parameters() if id(p) in owned]
        # per stage, its optimizer groups as the plain model's names (what reshard.py needs to convert a checkpoint)
        plain = {id(p): n for n, p in model.named_parameters()}
        mine = [[plain[id(p)] for p in g["params"]] for g in self.ds.optimizer.param_groups]
        self.stage_groups: list = [None] * self._dist.get_world_size()
        torch.distributed.all_gather_object(self.stage_groups, (self.stage_id, [s["name"] for s in self.group_settings], mine))
        # the tied weight lives on two stages with the same gradient: counted once in the norm
        self._norm_params = [p for n, p in module.named_parameters()
                             if not (n.startswith("tied_modules.") and not self.ds.is_first_stage())]

    @collective
    def forward_backward(self, input_ids, targets, document_ids, accum_steps, images=None):
        if images is not None:
            raise ValueError("images (model.vision) are not lowered to pipeline stages")
        if document_ids is not None:
            raise ValueError("document masking (document ids) is not lowered to pipeline stages")
        if accum_steps != self.ds.micro_batches:
            raise ValueError(f"{accum_steps} micro-batches a step, the pipeline was built for {self.ds.micro_batches}")
        self._pending.append((input_ids.to(self.device), targets.to(self.device)))
        if len(self._pending) < accum_steps:
            return torch.zeros((), device=self.device)
        batches, self._pending = self._pending, []
        # forward and backward of every micro-batch, the step held back; quiet: DeepSpeed prints a loss line
        # at its step 0, and torch warns that the tied weights' broadcast has no autograd kernel (it needs none)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"c10d::broadcast_")
            loss = self.ds.train_batch(iter(batches))
        return loss.detach().float() * accum_steps

    @collective
    def step(self, lr):
        set_lr(self.ds.optimizer.param_groups, lr)
        if self.stage >= 1:  # ZeRO-1: its optimizer measures the norm and clips (config gradient_clipping)
            self._take_step(None)
            norm = self.ds.get_global_grad_norm()
            return torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32).to(self.device)
        grads = [p.grad for p in self._norm_params if p.grad is not None]
        square = torch.nn.utils.get_total_norm(grads).square() if grads else torch.zeros((), device=self.device)
        self._dist.all_reduce(square, group=self.ds.grid.get_pipe_parallel_group())
        norm = square.sqrt()
        if not torch.isfinite(norm):
            self.ds.optimizer.zero_grad(set_to_none=True)
            return norm
        if self.grad_clip:
            scale = torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0)
            for p in self.pipe_module.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        self._take_step(None)
        return norm

    @collective
    @torch.no_grad()
    def evaluate(self, input_ids, targets, document_ids, images=None):
        if images is not None:
            raise ValueError("images (model.vision) are not lowered to pipeline stages")
        if document_ids is not None:
            raise ValueError("document masking (document ids) is not lowered to pipeline stages")
        batch = (input_ids.to(self.device), targets.to(self.device))
        loss = self.ds.eval_batch(iter([batch]), num_micro_batches=1)  # (1,), broadcast from the last stage
        return loss.detach().float().reshape(())

    @collective
    def generate(self, prompt_ids, max_new_tokens):
        # every rank gathers the stages' weights into its plain model and generates the same tokens
        self.model.load_state_dict(self._gather(all_ranks=True), strict=False)
        return greedy_continuation(self.model, prompt_ids, max_new_tokens, self.device)

    def _gather(self, all_ranks: bool) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        mine = {n: params[n].detach().to("cpu", torch.float32).clone() for n in self.owned_names}
        world = torch.distributed.get_world_size()
        parts: list | None = [None] * world
        if all_ranks:
            torch.distributed.all_gather_object(parts, mine)
        else:
            parts = parts if self.is_main else None
            torch.distributed.gather_object(mine, parts, dst=0)
        out: dict[str, torch.Tensor] = {}
        for part in parts or []:
            out.update(part)
        return out

    @collective
    def consolidated_state_dict(self, names=None):
        gathered = self._gather(all_ranks=False)
        if not self.is_main:
            return {}
        out = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if names is not None and name not in names:
                continue
            out[name] = gathered.get(name, tensor.detach().to("cpu", torch.float32))  # buffers: every rank's own
        if self.model.tie_embeddings:
            out["lm_head.weight"] = out["embed.weight"]
        return out

    @collective
    def reduce_mean(self, value):
        # over every rank: the stages of a pipeline hold the same (broadcast) value
        total = value.detach().clone().float()
        self._dist.all_reduce(total)
        return total / self._dist.get_world_size()

    def layout(self) -> dict:
        """The checkpoint's layout: besides DeepSpeed's, the pipeline's stages, each stage's optimizer groups
        (plain parameter names, the order of its `mp_rank_NN_model_states.pt` optimizer state) and the
        groups of the whole model in its own order (the local engine's numbering)."""
        by_stage: dict[int, tuple[list[str], list[list[str]]]] = {}
        for stage, names, groups in self.stage_groups:  # the first data-parallel rank of each stage
            by_stage.setdefault(stage, (names, groups))
        order = [n for n, _ in self.model.named_parameters()]
        kinds: dict[str, set[str]] = {}
        for names, groups in by_stage.values():
            for kind, group in zip(names, groups):
                kinds.setdefault(kind, set()).update(group)
        return {**super().layout(), "pipeline_stages": self.stages,
                "stage_groups": [by_stage[s][1] for s in sorted(by_stage)],
                "groups": [[n for n in order if n in members] for members in kinds.values()],
                "group_kinds": list(kinds)}

    @collective
    def load(self, checkpoint_dir):
        from .. import reshard

        saved = reshard.read_layout(checkpoint_dir)
        found = (saved.get("pipeline_stages", 1), saved["zero_stage"], saved["world_size"])
        if found != (self.stages, self.stage, self.world_size):
            raise reshard.ReshardError(
                f"{checkpoint_dir}: saved by {found[0]} pipeline stage(s) at ZeRO {found[1]} on {found[2]} data-parallel "
                f"rank(s); this run has {self.stages} at ZeRO {self.stage} on {self.world_size}. A pipeline checkpoint "
                f"resumes on the same pipeline, or on the local engine (reshard.prepare_local_resume)")
        self.ds.load_checkpoint(str(Path(checkpoint_dir) / reshard.DS_DIR), tag=reshard.TAG, load_lr_scheduler_states=False)
        for group, settings in zip(self.ds.optimizer.param_groups, self.group_settings):
            group.update(settings)
        self._pending = []

