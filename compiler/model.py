"""The transformer: token embedding, n_layers blocks, a final norm, the output head.

Each layer is built from its own block spec (model.block, or the model.layers override that holds
it: a layer pattern); a transformer block (compiler/blocks/transformer.py) by default.

Parameter names (stable: the runtime saves safetensors by them, the plan counts them):

    embed.weight                              (vocab, C)
    pos_embed.weight                          (max_seq_len, C)        learned positions only
                                              (RoPE's cos/sin tables are not saved: recomputed)
    blocks.{i}.attn_norm.weight / .bias       (C,)                    bias: layernorm with bias
    blocks.{i}.attn.q_proj|k_proj|v_proj|o_proj.weight / .bias       mha, gqa, mqa
    blocks.{i}.attn.q_down|q_up|q_proj|kv_down|kv_up|k_rope|o_proj.weight / .bias   mla
    blocks.{i}.attn.q_latent_norm|kv_latent_norm.weight               mla with latent_norm
    blocks.{i}.attn.q_norm|k_norm.weight      (qk head width,)        qk_norm
    blocks.{i}.mlp_norm.weight / .bias
    blocks.{i}.mlp.up|down.weight / .bias     gelu;   blocks.{i}.mlp.gate|up|down.weight  swiglu
    norm.weight / .bias                       the final norm
    lm_head.weight                            (vocab, C)   with tie_embeddings, the same Parameter as
                                              embed.weight: named_parameters() lists it once (as
                                              embed.weight); state_dict() has both names, one tensor

Biases exist only where the spec asks for them. Build with `tabula.compiler.build_model(spec)`.
A fine-tuning method (compiler/adapters.py apply_finetune) adds names: LoRA and DoRA move an adapted
module's weights to `<module>.base_layer.weight` beside `<module>.lora_A.default.weight`, `lora_B`
(and DoRA's `lora_magnitude_vector`); prompt and prefix tuning add `virtual_tokens.encoder.*`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tabula.schemas.blocks.sparsity import Backend, MaskPattern
from tabula.schemas.model import Model as ModelSpec

from .blocks import build_block, build_norm, build_position
from .blocks.init import WeightInit
from .blocks.masks import Mask, attention_mask, runs_flex
from .blocks.moe import MoEMLP
from .blocks.registry import LayerModule
from .kernels import loss_kernel

from .vision import ImageInput, VisionTower

if TYPE_CHECKING:
    from .adapters import Applied
    from .virtual_tokens import VirtualTokens


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, vocab) logits against (B, T) targets, in fp32, over targets != -100;
    0 with zero gradients where every target is -100 (a micro-batch inside a conversation's prompt)."""
    targets = targets.reshape(-1)
    total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets, ignore_index=-100, reduction="sum")
    return total / (targets != -100).sum().clamp(min=1)


def _module(layer: LayerModule) -> nn.Module:
    """A built layer as the nn.Module every layer kind is (the model's ModuleList holds modules)."""
    assert isinstance(layer, nn.Module), f"a layer kind built a {type(layer).__name__}, not an nn.Module"
    return layer


class Transformer(nn.Module):
    """A decoder-only transformer built from the `model:` section of a spec.

    forward(input_ids (B, T), targets (B, T) or None, *, document_ids (B, T) or None, images or None)
      -> logits (B, T, vocab), or (logits, loss) with targets (mean cross-entropy over
         targets != -100; in training mode, a mixture of experts' weighted balancing and z-losses
         added); (None, loss) where model.kernels.cross_entropy computes the loss without the logits
         (chunked, liger). With document_ids, tokens attend only within their document
         (positions keep counting across documents, as in Llama 3's document masking). With
         images (compiler/vision.py ImageInput), their projected patches replace the image tokens' embeddings.

    Prompt and prefix tuning (compiler/adapters.py) set `virtual_tokens`: n positions before every
    sequence, seen by every token. Prompt tuning's are embeddings the blocks run over (positions
    0..n-1, the tokens n..n+T-1); prefix tuning's are each layer's keys and values, and the tokens'
    positions start at n, as peft's prefixes sit in a Hugging Face model's KV cache.
    """

    def __init__(self, spec: ModelSpec, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = spec.max_seq_len
        self.n_layers = spec.n_layers
        self.init_scheme = spec.init
        self.embed = nn.Embedding(vocab_size, spec.d_model)
        self.pos_embed = build_position(spec.position, d_model=spec.d_model, rotary_dim=spec.rotary_dim if spec.position.rotary else 0, max_seq_len=spec.max_seq_len)
        self.blocks = nn.ModuleList(_module(build_block(block, d_model=spec.d_model, dropout=spec.dropout)) for block in spec.layer_blocks)
        self.norm = build_norm(spec.block.norm, spec.d_model)
        self.tie_embeddings = spec.tie_embeddings
        self.lm_head = nn.Linear(spec.d_model, vocab_size, bias=False)
        if self.tie_embeddings:
            # A module of its own even when tied, so that sharded engines (ZeRO-3) gather the
            # weight around the head's forward as they do around the embedding's.
            self.lm_head.weight = self.embed.weight
        # each layer's mask: its attention's pattern (window, sparse) and backend; one mask per distinct pair
        self.layer_masks: list[tuple[MaskPattern, Backend]] = [(block.pattern, block.attention_backend) for block in spec.layer_blocks]
        self._masks: dict[tuple[int, torch.device, int, MaskPattern, bool], Mask | None] = {}
        self.loss_fn = cross_entropy  # compile.apply_compile may swap in a compiled copy
        self.loss_kernel = loss_kernel(spec.kernels)  # None: logits, then loss_fn
        # the mixture-of-experts MLPs (compiler/blocks/moe.py): their aux_loss joins the training loss
        self.routers = [module for module in self.blocks.modules() if isinstance(module, MoEMLP)]
        # Set by compiler/adapters.apply_finetune: what the fine-tuning method changed (None: nothing), and
        # prompt or prefix tuning's virtual tokens (compiler/virtual_tokens.py).
        self.finetune: Applied | None = None
        self.virtual_tokens: VirtualTokens | None = None
        # model.vision: the image encoder and projector (compiler/vision.py); registered last, named vision.*
        self.vision = VisionTower(spec.vision, spec.d_model) if spec.vision is not None else None

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *, document_ids: torch.Tensor | None = None,
        images: ImageInput | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        T, n = input_ids.size(1), self.n_virtual
        if T + n > self.max_seq_len:
            raise ValueError(f"sequence of {T} tokens{f' and {n} virtual tokens' if n else ''} is longer than max_seq_len ({self.max_seq_len})")
        x, prefix = self.embed(input_ids), None  # (B, T, C)
        if images is not None and self.vision is not None:  # the images' patches in place of the image tokens
            x = self.vision.place(x, images)
        if self.virtual_tokens is not None:
            # prompt tuning: (B, n + T, C), no prefix; prefix tuning: x, each layer's (keys, values) (B, n_kv, n, hs)
            x, prefix = self.virtual_tokens(x)
        x, rope = self.pos_embed(x, offset=n if prefix is not None else 0)  # RoPE's (cos, sin) or None
        masks = {key: self.attention_mask(T, document_ids, input_ids.device, *key) for key in dict.fromkeys(self.layer_masks)}
        for i, block in enumerate(self._layers()):
            layer_prefix, mask = prefix[i] if prefix is not None else None, masks[self.layer_masks[i]]
            if block.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, mask, layer_prefix, use_reentrant=False)
            else:
                x = block(x, rope, mask, layer_prefix)
        x = self.norm(x[:, -T:])  # a prompt's virtual positions predict nothing
        logits: torch.Tensor | None = None
        if targets is not None and self.loss_kernel is not None and type(self.lm_head) is nn.Linear:
            # model.kernels.cross_entropy: projection and loss fused, the full logits never materialised
            # (a head a fine-tuning method wrapped takes the standard path, which sees its adapters)
            loss = self.loss_kernel(x, self.lm_head.weight, targets)
        else:
            logits = self.lm_head(x)  # (B, T, vocab)
            if targets is None:
                return logits
            loss = self.loss_fn(logits, targets)
        if self.training and self.routers:  # a mixture of experts' balancing and z-losses join the training loss
            loss = loss + sum(router.aux_loss for router in self.routers if router.aux_loss is not None)
        return logits, loss

    @property
    def n_virtual(self) -> int:
        """Virtual token positions before every sequence (prompt or prefix tuning), else 0."""
        return 0 if self.virtual_tokens is None else self.virtual_tokens.n

    def _layers(self) -> list[LayerModule]:
        """The blocks, typed as the layers they are (build_block checked each one)."""
        return cast("list[LayerModule]", list(self.blocks))

    @property
    def windows(self) -> list[int | None]:
        """The distinct attention windows of the layers (None: the whole causal context)."""
        return list(dict.fromkeys(pattern.window for pattern, _ in self.layer_masks))

    @property
    def window(self) -> int | None:
        """The first layer's attention window (every layer's, unless a layer pattern varies it)."""
        return self.layer_masks[0][0].window

    def attention_mask(self, seq_len: int, document_ids: torch.Tensor | None, device: torch.device,
                       pattern: MaskPattern | None = None, backend: Backend | None = None) -> Mask | None:
        """The mask the layers with attention `pattern` and `backend` share (default: the first layer's): None
        (plain causal), a boolean mask or a FlexAttention block mask (blocks/masks.py), cached per length.
        With virtual tokens, its keys include them (seen by every token) and its queries are the prompt's
        virtual tokens and the sequence, or the sequence alone after a prefix."""
        pattern = self.layer_masks[0][0] if pattern is None else pattern
        backend = self.layer_masks[0][1] if backend is None else backend
        n = self.n_virtual
        prefix_only = self.virtual_tokens is not None and n > 0 and self.virtual_tokens.keys_only
        if document_ids is not None or torch.compiler.is_compiling():
            return attention_mask(seq_len, pattern, document_ids, device, backend=backend, virtual=n, keys_only=prefix_only)
        key = (seq_len, device, n, pattern, runs_flex(backend, device))
        if key not in self._masks:
            self._masks[key] = attention_mask(seq_len, pattern, None, device, backend=backend, virtual=n, keys_only=prefix_only)
        return self._masks[key]

    # ------------------------------------------------------------ weights

    def materialize(self, device: torch.device | str, seed: int) -> Transformer:
        """Allocates the parameters on `device` (from the meta device) and initialises them."""
        self.to_empty(device=device)
        if self.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._masks.clear()
        self.init_weights(seed)
        return self

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Every module initialises its own parameters by the spec's scheme (model.init; norms one,
        biases zero): each parameter draws from its own CPU generator seeded by (seed, name), so
        the same seed gives the same weights on any device, and adding a module leaves the
        others' values unchanged. A tied head is the embedding: drawn once, as embed.weight."""
        init = WeightInit(self.init_scheme, seed, self.n_layers)
        init.weight_(self.embed.weight, "embed.weight", "embedding")
        self.pos_embed.init_weights(init.at("pos_embed"))
        for i, block in enumerate(self._layers()):
            block.init_weights(init.at(f"blocks.{i}"))
        self.norm.init_weights(init.at("norm"))
        if not self.tie_embeddings:
            init.linear_(self.lm_head, "lm_head", "output")
        if self.vision is not None:
            self.vision.init_weights(init.at("vision"))
