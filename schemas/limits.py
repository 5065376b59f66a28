"""The ceilings a spec's numbers must stay under, each with the reason the run needs it.

A spec that validates must not crash the run: every bound here is one past which some part of
the run (torch, numpy, DeepSpeed, the filesystem, or tabula's own loops) fails, hangs or
silently rounds. Whether a model fits a given device's memory is not decided here: the runtime
compares the plan with the device before allocating.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

# torch, numpy and DeepSpeed hold counts, sizes, offsets and seeds in int64.
INT64_MAX = 2**63 - 1

# Token counts (budgets, intervals, boundaries, characters): float64 holds every whole number up to
# 2**53 exactly, so `2.5B`-style counts parse exactly and schedules computed in floats stay exact;
# 2**53 is 8e15 tokens, hundreds of times the largest training runs.
MAX_TOKENS = 2**53

# Tokens a step: the largest batches trained with are about 2**26 tokens; a step of 2**40 is a
# whole large-model run in one update. The plan searches the divisors of the sequences a step.
MAX_BATCH_TOKENS = 2**40

# A tensor's size in bytes is an int64 in torch (and in DeepSpeed's flat buffers): float32 elements,
# 4 bytes each, overflow it past 2**61. `d_model: 1000000000000` asked for 10**24 elements.
MAX_TENSOR_ELEMENTS = 2**61 - 1

# The deepest transformers trained have about 1000 blocks; tabula builds (and the plan lists) one
# module per block, which takes seconds at 4096 and hangs for minutes at 10**8.
MAX_LAYERS = 4096


Factor = tuple[int, str, tuple[Any, ...]]  # (size, how the error names it, the spec path blamed for it)


def weight_shapes(spec: Any) -> Iterator[tuple[str, list[Factor], bool]]:
    """(what, factors, in every block) for the largest tensors of `spec`'s model: the embeddings and
    each block's biggest matrices, as the factors of their element counts. The vocabulary is left
    out where only the tokenizer file knows it."""
    model = spec.model
    d_model: Factor = (model.d_model, "d_model", ("model", "d_model"))
    if model.block.kind == "mamba":
        yield from _mamba_shapes(spec, d_model)
        return
    attn = model.block.attention
    heads: Factor = (attn.n_heads, "n_heads", ("model", "block", "attention", "n_heads"))
    if attn.head_dim is not None:
        width: Factor = (attn.head_dim, "head_dim", ("model", "block", "attention", "head_dim"))
    else:
        width = (model.head_dim, "the head width d_model / n_heads", ("model", "d_model"))
    yield from _embedding_shapes(spec, d_model, lambda: width)
    yield "the query projection", [heads, width, d_model], True
    blocks = [(model.block, ("model", "block"))] + [(o.block, ("model", "layers", j, "block")) for j, o in enumerate(model.layers)]
    for block, path in blocks:
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            continue
        hidden: Factor = (mlp.hidden, "hidden", (*path, "mlp", "hidden"))
        yield "the MLP", [hidden, d_model], True
        if mlp.kind == "moe":  # the experts' stacked projections: one tensor of n_experts x 2 hidden x d_model
            yield "the experts' gate and up projections", [(mlp.n_experts, "n_experts", (*path, "mlp", "n_experts")), hidden,
                                                          (2, "gate and up", (*path, "mlp", "hidden")), d_model], True
    if attn.kind == "mla":
        v_width = attn.v_head_dim if attn.v_head_dim is not None else model.head_dim
        kv_latent: Factor = (attn.kv_latent, "kv_latent", ("model", "block", "attention", "kv_latent"))
        yield "the key/value latent up-projection", [heads, (model.head_dim + v_width, "key and value widths", width[2]), kv_latent], True
        yield "the key/value latent", [kv_latent, d_model], True
        if attn.q_latent is not None:
            yield "the query latent up-projection", [heads, width, (attn.q_latent, "q_latent", ("model", "block", "attention", "q_latent"))], True


def _embedding_shapes(spec: Any, d_model: Factor, width: Callable[[], Factor]) -> Iterator[tuple[str, list[Factor], bool]]:
    """The token embedding, and the position embedding or the rotary table (rows of `width()`, asked
    for only where there is a rotary table: a model without attention has no head width)."""
    model = spec.model
    vocab = spec.vocab_size
    if vocab is not None:
        named = isinstance(model.vocab_size, int)
        yield "the token embedding", [(vocab, "vocab_size", ("model", "vocab_size") if named else ("data", "tokenizer", "vocab_size")),
                                      d_model], False
    seq: Factor = (model.max_seq_len, "max_seq_len", ("model", "max_seq_len"))
    if model.position.kind == "learned":
        yield "the position embedding", [seq, d_model], False
    elif model.position.kind == "rope":
        yield "the rotary table", [seq, width()], False


def _mamba_shapes(spec: Any, d_model: Factor) -> Iterator[tuple[str, list[Factor], bool]]:
    """weight_shapes for a model whose default block is a Mamba layer (no attention, no rotary table
    unless an override has attention: its width is then the model's head width)."""
    model, mixer = spec.model, spec.model.block.mixer
    yield from _embedding_shapes(spec, d_model, lambda: (model.head_dim, "the head width", ("model", "d_model")))
    expand: Factor = (mixer.expand, "expand", ("model", "block", "mixer", "expand"))
    yield "the Mamba input projection", [(2, "x and z", expand[2]), expand, d_model, d_model], True
    yield "the Mamba state matrix A", [expand, d_model, (mixer.d_state, "d_state", ("model", "block", "mixer", "d_state"))], True
    if model.block.mlp is not None:
        yield "the MLP", [(model.block.mlp.hidden, "hidden", ("model", "block", "mlp", "hidden")), d_model], True


def elements(factors: list[Factor]) -> int:
    """The element count of a tensor with these factors."""
    count = 1
    for size, _, _ in factors:
        count *= size
    return count
