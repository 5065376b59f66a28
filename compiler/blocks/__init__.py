"""The building blocks of a transformer, one kind a class, chosen by the spec's `kind`:

    attention.py  mha, gqa, mqa (CausalSelfAttention)     mla.py   mla (LatentAttention)
    position.py   rope, learned, none (Rope, ...)         norm.py  rmsnorm, layernorm
    mlp.py        gelu, swiglu                            registry.py  kind -> class
    moe.py        moe (a mixture of experts MLP)          transformer.py  the transformer block (a layer kind)
    init.py       WeightInit, what init_weights draws with

Each registered class builds from its narrow sub-spec and the widths it needs, never the root
spec (`build`), initialises its own parameters (`init_weights`) and says how it maps to Hugging
Face transformers, or that it does not (`hf`). Its spec class in schemas/blocks/ answers the
torch-free questions: derived widths, parameter shapes, FLOPs and activation bytes. The model,
the plan, the activation estimate and the export loop over what the kinds report and never
name one.

Adding a kind (say an attention kind `foo`):

1. schemas/blocks/foo.py: `class Foo(AttentionSpec)` with `kind: Literal["foo"]`, its fields
   (each with a description: the JSON Schema and the wizard read them), `dims`,
   `projection_biases`, `parameter_shapes`, `kernel_bytes_per_token` (FLOPs and the shared
   activation terms come from AttentionSpec; override where the kind differs) and `check` if its
   widths need more than the shared checks; add `Foo` to the `Attention` union in
   schemas/model.py and regenerate schemas/tabula-spec.schema.json (`tabula schema --out ...`).
2. compiler/blocks/foo.py: `@ATTENTION.register("foo") class FooAttention(nn.Module)` with
   `build`, `forward(x, rope, mask)`, `init_weights(init)` and `hf` (an HFMapping subclass, or
   `NoHF("foo has no Hugging Face equivalent here")`; a mapping that `reads` an architecture
   also turns its config.json into the kind's spec and its tensors back: `read_config`,
   `tensors_from_hf`). Every module in this package is imported here, so nothing else registers it.
3. tests: an example spec of the kind in tests/compiler/kind_examples.py; the registry walk
   (test_kinds.py) then checks every part, and the property tests (test_kind_properties.py)
   hold the plan's shapes, FLOPs and activations to the built module's.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .registry import ATTENTION, BLOCK, MLP, NORM, POSITION, BlockModule

# Every module of the package registers its kinds when imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_block(spec: Any, *, d_model: int, dropout: float) -> BlockModule:
    """One layer of the model: the block kind `spec` describes (forward(x, rope, mask, prefix) -> x;
    `window`: the sliding window its attention masks with, None for the whole context or none)."""
    return BLOCK[spec.kind].build(spec, d_model=d_model, dropout=dropout)


def build_attention(spec: Any, *, d_model: int, norm_eps: float, dropout: float) -> BlockModule:
    """The attention module `spec` describes over a d_model-wide stream; `norm_eps` is used by
    QK-norm, `dropout` on the attention weights while training."""
    return ATTENTION[spec.kind].build(spec, d_model=d_model, norm_eps=norm_eps, dropout=dropout)


def build_mlp(spec: Any, d_model: int) -> BlockModule:
    """The feed-forward module `spec` describes, d_model -> d_model."""
    return MLP[spec.kind].build(spec, d_model)


def build_norm(spec: Any, dim: int) -> BlockModule:
    """The norm `spec` describes over a last dimension of width `dim`."""
    return NORM[spec.kind].build(spec, dim)


def build_position(spec: Any, *, d_model: int, rotary_dim: int, max_seq_len: int) -> BlockModule:
    """The position module `spec` describes: forward(x) -> (x, rope tables or None). `rotary_dim`
    is the width RoPE rotates (the model spec's `rotary_dim`)."""
    return POSITION[spec.kind].build(spec, d_model=d_model, rotary_dim=rotary_dim, max_seq_len=max_seq_len)


__all__ = ["BLOCK", "build_block", "ATTENTION", "MLP", "NORM", "POSITION", "build_attention", "build_mlp", "build_norm", "build_position"]
