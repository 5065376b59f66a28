"""Activation memory of one micro-batch: the tensors the forward pass keeps for the backward.

In the style of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4): per layer, sum the tensors each operation saves, as a number of elements per
token times bytes per element, for this codebase's blocks (compiler/blocks) as they run:

    norm (RMSNorm)    input, normalised, output                      3 d      (LayerNorm: 2 d)
    attention         q, k, v and output as the SDPA kernel saves them, the output re-laid for
                      o_proj, the log-sum-exp per head (fp32); flash / memory-efficient kernels
                      keep no T x T matrix, so there is no 5 a s / h term
    MLP               SwiGLU: gate, silu(gate), up, their product    4 hidden (GELU: 2 hidden)
    dropout (p > 0)   a one-byte mask on each residual branch, and attention's T x T softmax,
                      mask and dropped probabilities where dropout is not fused (CPUs)
    head              final norm, logits (returned to the caller) and their fp32 log-softmax

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

from tabula.schemas.model import MLA
from tabula.schemas.model import Model as ModelSpec


def _norm_bytes(model: ModelSpec, d: int, mode: str, consumers: int) -> int:
    """Bytes per token a norm over width d keeps, its output included (kept by the matmuls that
    read it: one tensor, except under autocast, where each of `consumers` keeps its own
    half-precision copy). `mode`: fp32, autocast (fp32 residual stream) or half (all 16-bit)."""
    output = {"fp32": 4 * d, "autocast": 2 * d * consumers, "half": 2 * d}[mode]
    if model.block.norm.kind == "rmsnorm":
        normed = 2 if mode == "half" else 4  # x * rsqrt, back in the stream's type
        return 4 * d + normed * d + output + 4  # x in fp32, normalised; rsqrt per token
    return (2 if mode == "half" else 4) * d + output + 8  # input; mean and rstd per token


def _mode(precision: str, autocast: bool) -> str:
    if precision == "fp32":
        return "fp32"
    return "autocast" if autocast else "half"


def layer_bytes_per_token(model: ModelSpec, seq_len: int, precision: str, autocast: bool = True) -> int:
    """Bytes one transformer block keeps per token for the backward pass (`autocast`: bf16/fp16
    as autocast over fp32 weights, else weights and stream in 16 bits, as DeepSpeed runs them)."""
    half = 2 if precision in ("bf16", "fp16") else 4
    mode = _mode(precision, autocast)
    d, attn, hd = model.d_model, model.block.attention, model.head_dim
    nh = attn.n_heads
    mlp = model.block.mlp
    # attention reads its norm's output three times (q, k, v; MLA: q, kv latent, rotary key)
    total = _norm_bytes(model, d, mode, 3) + _norm_bytes(model, d, mode, 2 if mlp.kind == "swiglu" else 1)
    windowed = attn.window is not None and attn.window < seq_len
    if isinstance(attn, MLA):
        hv = attn.v_head_dim or hd
        nope = hd - attn.rope_head_dim
        latents = (attn.q_latent or 0) + attn.kv_latent
        latent_norm = 2 * latents * 4 if attn.latent_norm else 0
        # latents; kv_up's output (keys' content and values, v a view of it); q and k re-assembled
        # with their rotary parts; the SDPA output and its re-laid copy for o_proj
        elements = latents + nh * (nope + hv) + 2 * nh * hd + 2 * nh * hv
        total += elements * half + latent_norm
    else:
        kv = nh if windowed else model.n_kv_heads  # a mask repeats shared key/value heads
        elements = 2 * nh * hd + 2 * kv * hd + nh * hd  # q, k, v, output, its re-laid copy
        total += elements * half
    if attn.qk_norm:
        total += 2 * nh * hd * 4 + 2 * nh * hd * half  # input and normalised of q and k
    total += nh * 4  # log-sum-exp
    total += (4 if mlp.kind == "swiglu" else 2) * mlp.hidden * half
    if model.dropout > 0:
        # one-byte masks on both residual branches; attention dropout falls back to the math
        # kernel where it is not fused (CPUs): scaled q, softmax, its mask and the dropped
        # probabilities (T x T per head, as Korthikanti's 5 a s / h term)
        total += 2 * d + nh * hd * half + 3 * nh * seq_len * half
    return total


def head_bytes_per_token(model: ModelSpec, vocab_size: int, precision: str, autocast: bool = True) -> int:
    """Bytes per token outside the blocks: token ids and targets, the final norm, the logits and
    the fp32 log-softmax the loss keeps."""
    half = 2 if precision in ("bf16", "fp16") else 4
    return 16 + _norm_bytes(model, model.d_model, _mode(precision, autocast), 1) + vocab_size * (half + 4)


def activation_bytes(
    model: ModelSpec, vocab_size: int, micro_batch: int, seq_len: int, precision: str, policy: str = "none", every_n: int = 2,
    *, autocast: bool = True,
) -> int:
    """Peak bytes of activations for one micro-batch of `micro_batch` sequences of `seq_len` tokens,
    with activation checkpointing `policy` (none | full | every_n: blocks 0, n, 2n... recompute);
    bf16/fp16 under autocast (one local process) or, with autocast=False, in 16 bits throughout."""
    tokens = micro_batch * seq_len
    layer = layer_bytes_per_token(model, seq_len, precision, autocast)
    L = model.n_layers
    stream = 2 if _mode(precision, autocast) == "half" else 4
    checkpointed = {"none": 0, "full": L, "every_n": len(range(0, L, every_n))}[policy]
    kept = (L - checkpointed) * layer + checkpointed * model.d_model * stream
    recompute = layer if checkpointed else 0
    return tokens * (kept + recompute + head_bytes_per_token(model, vocab_size, precision, autocast))
