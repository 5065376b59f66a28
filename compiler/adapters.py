"""Fine-tuning methods applied by a function over the plain model, as compile and checkpointing are.

    apply_finetune(model, finetune, *, seed, precision="fp32") -> model   (in place; `train.finetune`)
    merge_adapters(model) -> model      LoRA / DoRA folded into the weights: tabula's plain names again
    peft_config(finetune, model_spec, targets) -> a peft config (LoraConfig, PromptTuningConfig, ...)

LoRA, DoRA and QLoRA are peft's own layers, injected with `peft.inject_adapter_in_model` into the
targeted nn.Linear modules (their weights move to `<module>.base_layer.weight`, the adapter's are
`<module>.lora_A.default.weight`, `lora_B`, DoRA's `lora_magnitude_vector`); peft freezes the rest.
QLoRA first swaps every block's nn.Linear for bitsandbytes' Linear4bit (CUDA only), which peft's
LoRA then wraps. Prompt and prefix tuning are peft's PromptEmbedding and PrefixEncoder in the hook
the Transformer offers (compiler/virtual_tokens.py). `full` sets requires_grad off on the names its
`freeze` globs match. peft is imported inside the functions: the compiler stays cheap to import.

Every adapter is drawn from a generator seeded with `seed` (the spec's), on the CPU, so every rank and
every device draws the same one, and a rebuilt model (a resume, an export) holds the same adapters
before the checkpoint's weights are loaded. `model.finetune` records what was applied (`Applied`),
with a fingerprint of the frozen base weights that checkpoints keep (runtime/checkpoint.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tabula.schemas.finetune import LOW_RANK, Full, PrefixTuning, PromptTuning, QLora, glob_matches, summarise_names

from .virtual_tokens import PrefixTokens, PromptTokens

if TYPE_CHECKING:
    from tabula.schemas.finetune import Finetune
    from tabula.schemas.model import Model as ModelSpec

    from .model import Transformer


class FinetuneError(ValueError):
    """A fine-tuning method that cannot be applied to this model or on this device; the message says why."""


@dataclass(frozen=True)
class Applied:
    """What apply_finetune did: the method (`train.finetune.kind`), parameters trained and held fixed
    (counted once; adapters included in `trainable`), and the frozen base's fingerprint (`base`:
    [sum, sum of squares] of each frozen tensor, by its name before any adapter wrapped it)."""

    method: str
    trainable: int
    frozen: int
    base: dict[str, list[float]]

    @property
    def trainable_only(self) -> bool:
        """Whether checkpoints hold the trained parameters alone (the base comes from the spec)."""
        return self.frozen > 0


def base_fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """[sum, sum of squares] in float64 of each tensor: tells a base apart from another (another seed,
    other weights) without reading it back; compared with a relative tolerance (sums on other devices
    differ in their last bits)."""
    out = {}
    for name, tensor in tensors.items():
        values = tensor.detach()
        squares = torch.linalg.vector_norm(values, dtype=torch.float64) ** 2
        out[name] = [float(values.sum(dtype=torch.float64)), float(squares)]
    return out


def same_base(a: dict[str, list[float]], b: dict[str, list[float]], rtol: float = 1e-6) -> list[str]:
    """Names whose fingerprints differ (or that one side lacks); [] when the bases agree."""
    differ = sorted(set(a) ^ set(b))
    for name in set(a) & set(b):
        if any(abs(x - y) > rtol * max(abs(x), abs(y), 1e-12) + 1e-9 for x, y in zip(a[name], b[name])):
            differ.append(name)
    return sorted(differ)


def linear_names(model: nn.Module) -> list[str]:
    """The model's nn.Linear modules an adapter may target (a head tied to the embedding is not one)."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and id(module.weight) not in tied]


def resolve(patterns: list[str], names: list[str], what: str) -> list[str]:
    """The names any glob matches, in the model's order; FinetuneError for a glob matching none
    (the spec check refuses it first; this catches a model built another way)."""
    for pattern in patterns:
        if not any(glob_matches(pattern, name) for name in names):
            raise FinetuneError(f"{pattern!r} matches no {what}; the {what}s are: {summarise_names(names)}")
    return [name for name in names if any(glob_matches(p, name) for p in patterns)]


def peft_config(finetune: Finetune, model_spec: ModelSpec | None = None, targets: list[str] | None = None, **extra: Any):
    """peft's config for the method: LoraConfig (lora, dora, qlora; `targets`: module names),
    PromptTuningConfig or PrefixTuningConfig (these need `model_spec`). `extra` goes to the config
    (base_model_name_or_path, inference_mode, rank_pattern ...)."""
    import peft

    if finetune.kind in LOW_RANK:
        return peft.LoraConfig(r=finetune.rank, lora_alpha=finetune.alpha, lora_dropout=finetune.dropout, use_rslora=finetune.rslora,
                               use_dora=finetune.kind == "dora", target_modules=targets, bias="none",
                               init_lora_weights=True if finetune.init == "default" else "gaussian", **extra)
    assert model_spec is not None, "prompt and prefix tuning's configs need the model spec"
    dims = model_spec.attention_dims
    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": finetune.virtual_tokens, "num_transformer_submodules": 1,
              "num_layers": model_spec.n_layers}
    if isinstance(finetune, PromptTuning):
        init = {"sample_vocab": "SAMPLE_VOCAB", "random": "RANDOM"}[finetune.init]
        return peft.PromptTuningConfig(token_dim=model_spec.d_model, num_attention_heads=dims.n_heads, prompt_tuning_init=init,
                                       **common, **extra)
    if isinstance(finetune, PrefixTuning):
        width = finetune.token_dim(model_spec)  # peft's token_dim for grouped keys: n_kv_heads x head_dim
        return peft.PrefixTuningConfig(token_dim=width, num_attention_heads=dims.n_kv_heads, prefix_projection=finetune.projection,
                                       encoder_hidden_size=finetune.projection_hidden or width,
                                       init_weights="zero" if finetune.init == "zero" else None, **common, **extra)
    raise FinetuneError(f"{finetune.kind} has no peft config")


@contextlib.contextmanager
def _seeded(seed: int):
    """Draws inside come from the CPU generator seeded with `seed`; the caller's generators are untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def apply_finetune(model: Transformer, finetune: Finetune | None, *, seed: int, precision: str = "fp32",
                   model_spec: ModelSpec | None = None, quantize: bool = True) -> Transformer:
    """Applies `train.finetune` to a materialised `model` in place and returns it (None: unchanged).
    `precision`: QLoRA's compute dtype; `quantize=False` keeps QLoRA's base as it is (an export merges
    its adapters into the full-precision base). `model_spec` (the spec's `model`) is needed by prompt
    and prefix tuning. Raises FinetuneError where the method does not fit (QLoRA off CUDA)."""
    if finetune is None:
        return model
    names = [name for name, _ in model.named_parameters()]
    frozen = finetune.frozen(names)
    params = dict(model.named_parameters())
    base = base_fingerprint({name: params[name] for name in names if name in frozen})
    with _seeded(seed):
        if finetune.kind in LOW_RANK:
            _inject_lora(model, finetune, precision, quantize)
        elif isinstance(finetune, (PromptTuning, PrefixTuning)):
            if model_spec is None:
                raise FinetuneError(f"{finetune.kind} needs the model spec")
            _attach_virtual_tokens(model, finetune, model_spec)
        elif isinstance(finetune, Full):
            for name, param in model.named_parameters():
                param.requires_grad_(name not in frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    model.finetune = Applied(finetune.kind, trainable, fixed, base)
    return model


def _inject_lora(model: Transformer, finetune: Any, precision: str, quantize: bool) -> None:
    import peft

    targets = resolve(finetune.targets, linear_names(model), "linear layer")
    if isinstance(finetune, QLora) and quantize:
        quantize_base(model, finetune, precision)
    peft.inject_adapter_in_model(peft_config(finetune, targets=targets), model)  # freezes every other parameter


def _attach_virtual_tokens(model: Transformer, finetune: PromptTuning | PrefixTuning, model_spec: ModelSpec) -> None:
    from peft import PrefixEncoder, PromptEmbedding

    for param in model.parameters():
        param.requires_grad_(False)
    config = peft_config(finetune, model_spec)
    if isinstance(finetune, PromptTuning):
        # built on the CPU (sample_vocab draws its token ids there), then moved beside the model
        virtual = PromptTokens(finetune.virtual_tokens, PromptEmbedding(config, model.embed))
    else:
        dims = model_spec.attention_dims
        virtual = PrefixTokens(finetune.virtual_tokens, PrefixEncoder(config), n_layers=model_spec.n_layers,
                               n_kv_heads=dims.n_kv_heads, head_dim=dims.head_dim)
    model.virtual_tokens = virtual.to(model.embed.weight.device)


def quantize_base(model: Transformer, finetune: QLora, precision: str) -> None:
    """Swap every block's nn.Linear for bitsandbytes' Linear4bit holding its weight in 4 bits (QLoRA's
    frozen base; the output head and embeddings stay as they are). CUDA only."""
    device = model.embed.weight.device
    if device.type != "cuda":
        raise FinetuneError(f"qlora holds the base in 4 bits with bitsandbytes, which needs a CUDA GPU; this model is on {device.type} "
                            "(use kind: lora on this device)")
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise FinetuneError("qlora needs bitsandbytes: pip install bitsandbytes") from error
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    for name, module in list(model.blocks.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None, compute_dtype=compute,
                                      compress_statistics=finetune.double_quant, quant_type=finetune.quant_type, device="cpu")
        quantized.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, compress_statistics=finetune.double_quant,
                                             quant_type=finetune.quant_type)
        if module.bias is not None:
            quantized.bias = nn.Parameter(module.bias.data.cpu(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.blocks.get_submodule(parent) if parent else model.blocks, child, quantized.to(device))  # .to quantizes


def merge_adapters(model: Transformer) -> Transformer:
    """LoRA and DoRA adapters folded into their base weights with peft's own `merge`, each adapted module
    replaced by its base layer: the model is a plain Transformer with tabula's parameter names again
    (merge_and_unload). Prompt and prefix tuning's virtual tokens stay (they fold into no weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    for param in model.parameters():
        param.requires_grad_(True)
    if model.virtual_tokens is None:
        model.finetune = None
    return model
