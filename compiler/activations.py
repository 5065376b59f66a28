"""Activation memory of one micro-batch: the tensors the forward pass keeps for the backward.

In the style of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4): per layer, sum the tensors each operation saves, as a number of elements per
token times bytes per element, for this codebase's blocks (compiler/blocks) as they run. Each
kind reports its own terms (`activation_bytes_per_token` of its spec class, schemas/blocks/);
this module adds them up over the model:

    norm (RMSNorm)    input, normalised, output                      3 d      (LayerNorm: 2 d)
    attention         q, k, v and output as the SDPA kernel saves them, the output re-laid for
                      o_proj, the log-sum-exp per head (fp32); flash / memory-efficient kernels
                      keep no T x T matrix, so there is no 5 a s / h term
    MLP               SwiGLU: gate, silu(gate), up, their product    4 hidden (GELU: 2 hidden)
                      and, with its dropout, a one-byte mask            + hidden
    dropout (p > 0)   a one-byte mask on each residual branch, and attention's T x T softmax,
                      mask and dropped probabilities where dropout is not fused (CPUs)
    head              final norm, logits (returned to the caller) and their fp32 log-softmax;
                      with a fused loss (model.kernels.cross_entropy) one chunk's logits instead

Mixed precision under autocast (one local process): matmul inputs and outputs are 2 bytes, each
matmul keeps its own half-precision copy of a norm's output, the residual stream and the norms'
fp32 internals are 4 bytes, the log-softmax 4. (Autocast's half-precision copies of the weights
are model state, counted by estimate.model_state_bytes.) In 16 bits throughout (DeepSpeed's
bf16/fp16 weights), the stream is 2 bytes too and a norm's output is one tensor. With activation checkpointing only each checkpointed
block's input is kept, and the backward recomputes one block at a time, so the peak is the kept
inputs plus one block's tensors. tests/compiler/test_estimate.py measures the quickstart model's
saved tensors and holds this within 25%.
"""

from __future__ import annotations

import math

from tabula.schemas.blocks.block import norm_bytes
from tabula.schemas.blocks.costs import Storage
from tabula.schemas.model import Model as ModelSpec


def layer_bytes_per_token(model: ModelSpec, seq_len: int, precision: str, autocast: bool = True, layer: int | None = None) -> int:
    """Bytes block `layer` (default: the largest) keeps per token for the backward pass (`autocast`:
    bf16/fp16 as autocast over fp32 weights, else weights and stream in 16 bits, as DeepSpeed runs
    them): what its block kind reports (its norms, attention and MLP kinds, dropout's masks)."""
    layers = _per_layer(model, seq_len, Storage.of(precision, autocast))
    return max(layers) if layer is None else layers[layer]


def _per_layer(model: ModelSpec, seq_len: int, storage: Storage) -> list[int]:
    """Each layer's bytes per token, computed once per distinct block spec (n_layers may be thousands)."""
    distinct = {id(block): block for block in model.layer_blocks}
    size = {key: block.activation_bytes_per_token(model.d_model, seq_len, storage, model.dropout) for key, block in distinct.items()}
    return [size[id(block)] for block in model.layer_blocks]


def head_bytes_per_token(model: ModelSpec, vocab_size: int, precision: str, autocast: bool = True) -> int:
    """Bytes per token outside the blocks: token ids and targets, the final norm, the logits and
    the fp32 log-softmax the loss keeps (not with a fused loss, model.kernels.cross_entropy: see
    loss_workspace_bytes)."""
    storage = Storage.of(precision, autocast)
    logits = vocab_size * (storage.matmul + 4) if model.kernels.cross_entropy == "standard" else 0
    return 16 + norm_bytes(model.block.norm, model.d_model, storage, 1) + logits


def loss_workspace_bytes(model: ModelSpec, vocab_size: int, tokens: int, precision: str, autocast: bool = True) -> int:
    """Peak bytes a fused loss holds for a micro-batch of `tokens` (0 for the standard loss, whose
    logits are counted per token): chunked, one chunk's logits and their fp32 softmax (and fp32 copy)
    (compiler/kernels/chunked_ce.py); liger, its chunk of tokens / ceil(vocab / d_model) rows (a power
    of two) likewise, and the input and weight gradients it computes in the forward, in fp32."""
    kernel = model.kernels.cross_entropy
    if kernel == "standard":
        return 0
    matmul = Storage.of(precision, autocast).matmul
    per_row = vocab_size * (matmul + 4 + (4 if matmul < 4 else 0))  # logits, fp32 (log-)softmax, and their fp32 copy in half precision
    if kernel == "chunked":
        return min(model.kernels.chunk_tokens, tokens) * per_row
    rows = 1 << max(0, math.ceil(tokens / math.ceil(vocab_size / model.d_model)) - 1).bit_length()
    return min(rows, tokens) * per_row + (tokens + vocab_size) * model.d_model * 4


def activation_bytes(
    model: ModelSpec, vocab_size: int, micro_batch: int, seq_len: int, precision: str, policy: str = "none", every_n: int = 2,
    *, autocast: bool = True,
) -> int:
    """Peak bytes of activations for one micro-batch of `micro_batch` sequences of `seq_len` tokens,
    with activation checkpointing `policy` (none | full | every_n: blocks 0, n, 2n... recompute);
    bf16/fp16 under autocast (one local process) or, with autocast=False, in 16 bits throughout."""
    tokens = micro_batch * seq_len
    storage = Storage.of(precision, autocast)
    layers, L = _per_layer(model, seq_len, storage), model.n_layers
    checkpointed = set({"none": range(0), "full": range(L), "every_n": range(0, L, every_n)}[policy])
    kept = sum(b for i, b in enumerate(layers) if i not in checkpointed) + len(checkpointed) * model.d_model * storage.stream
    recompute = max((layers[i] for i in checkpointed), default=0)
    head = head_bytes_per_token(model, vocab_size, precision, autocast)
    return tokens * (kept + recompute + head) + loss_workspace_bytes(model, vocab_size, tokens, precision, autocast)
