"""The `model:` section: a decoder-only transformer, block by block.

The kinds a block chooses from (attention, mlp, norm, position) are spec classes of their own in
schemas/blocks/, with their torch-free facts; this module joins them into discriminated unions.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from .base import SpecModel, field_error
from .blocks.costs import Shapes
from .blocks.attention import GQA, MHA, MQA, AttentionBias, AttentionDims, AttentionSpec
from .blocks.mla import MLA, LatentAttentionBias
from .blocks.mlp import GeluMLP, MLPSpec, SwigluMLP
from .blocks.norm import LayerNorm, NormSpec, RMSNorm
from .blocks.position import LearnedPositions, NoPositions, PositionSpec, Rope, RopeScaling
from .blocks.sparsity import MaskPattern, SparseAttention
from .init import FromWeights, GPT2Init, Init, TabulaPrimaInit
from .kernels import Kernels

# A new kind is one class in schemas/blocks/ and one member here.
Attention = Annotated[Union[MHA, GQA, MQA, MLA], Field(discriminator="kind")]
Position = Annotated[Union[Rope, LearnedPositions, NoPositions], Field(discriminator="kind")]
Norm = Annotated[Union[RMSNorm, LayerNorm], Field(discriminator="kind")]
MLP = Annotated[Union[GeluMLP, SwigluMLP], Field(discriminator="kind")]

__all__ = [
    "MHA", "GQA", "MQA", "MLA", "AttentionBias", "LatentAttentionBias", "AttentionDims", "AttentionSpec", "Attention",
    "Rope", "RopeScaling", "LearnedPositions", "NoPositions", "PositionSpec", "Position",
    "RMSNorm", "LayerNorm", "NormSpec", "Norm", "GeluMLP", "SwigluMLP", "MLPSpec", "MLP",
    "GPT2Init", "TabulaPrimaInit", "FromWeights", "Init", "Block", "Compile", "Model",
    "SparseAttention", "MaskPattern", "Kernels",
]


class Block(SpecModel):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    norm: Norm = Field(default_factory=lambda: RMSNorm(kind="rmsnorm"), description="The norm before attention, before the MLP and at the end of the model.")
    attention: Attention = Field(description="The attention variant and its heads.")
    mlp: MLP = Field(description="The feed-forward network.")


class Compile(SpecModel):
    enabled: Literal["auto"] | bool = Field(
        default="auto",
        description="torch.compile the model: auto compiles where the estimated saving repays the compile (always on a CUDA GPU; "
        "on a CPU for runs long enough, sooner with a warm compile cache; `tabula plan` says why), true and false force it.",
    )
    scope: Literal["block", "model"] = Field(
        default="block",
        description="block compiles each transformer block once and reuses it (same speed, far shorter compile); model compiles the whole forward.",
    )
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="default",
        description="torch.compile mode. reduce-overhead replays CUDA graphs (a GPU only: default elsewhere, with a note); "
        "max-autotune also searches kernel configurations (longer compile).",
    )
    fullgraph: bool = Field(default=False, description="Fail instead of falling back when a graph break occurs.")
    dynamic_shapes: bool = Field(
        default=True,
        description="Compile the batch and sequence dimensions as symbols from the start: one graph serves every curriculum "
        "stage, evaluation batch and sampling length (measured as fast as per-shape graphs on a CPU). false: torch's default, "
        "the first shape compiles specialised and a new shape compiles again.",
    )


class Model(SpecModel):
    """A decoder-only transformer."""

    vocab_size: Literal["auto"] | int = Field(
        default="auto", description="Vocabulary size; auto takes it from the tokenizer (its trained or known size)."
    )
    d_model: int = Field(gt=0, description="Width of the residual stream.")
    n_layers: int = Field(gt=0, description="Number of transformer blocks.")
    max_seq_len: int = Field(gt=0, description="Longest sequence the model is trained or run on.")
    position: Position = Field(default_factory=lambda: Rope(kind="rope"), description="How positions are encoded.")
    block: Block = Field(description="The transformer block repeated n_layers times.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output projection (saves vocab x d_model parameters).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on attention weights and residual branches; 0 for pretraining.")
    init: Init = Field(
        default_factory=lambda: GPT2Init(kind="gpt2"),
        description="Weight initialisation scheme: gpt2 (the default; `kind` may be left out) or tabulaprima (the original TabulaPrima model's); "
                    "or from: every weight loaded from a pretrained model (a Hugging Face checkpoint, hf:org/name, a tabula run).",
    )
    compile: Compile = Field(default_factory=Compile, description="torch.compile policy.")
    kernels: Kernels = Field(default_factory=Kernels, description="Which implementation computes the loss, norms, RoPE and SwiGLU (same results; memory and speed differ).")

    @model_validator(mode="after")
    def _shapes_agree(self) -> Model:
        if isinstance(self.vocab_size, int) and self.vocab_size <= 0:
            raise field_error("vocab_size", f"vocab_size must be positive or auto, found {self.vocab_size}")
        if isinstance(self.init, FromWeights) and not isinstance(self.vocab_size, int):
            raise field_error("vocab_size", "with init kind from, vocab_size must be the pretrained model's (a number), not auto")
        self.block.attention.check(self.d_model, rotary=self.position.rotary)
        if self.block.attention.backend == "flex" and self.dropout > 0:
            raise field_error(("block", "attention", "backend"), f"FlexAttention has no attention dropout and model.dropout is "
                                                                 f"{self.dropout}: set dropout to 0, or backend sdpa")
        return self

    @property
    def attention_dims(self) -> AttentionDims:
        """The attention's derived widths (heads, key/value heads, head and value widths, rotary width)."""
        return self.block.attention.dims(self.d_model)

    @property
    def head_dim(self) -> int:
        """Width of each query/key head (derived: head_dim or d_model / n_heads)."""
        return self.attention_dims.head_dim

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (derived from the attention kind)."""
        return self.attention_dims.n_kv_heads

    @property
    def rotary_dim(self) -> int:
        """Width RoPE rotates in each query/key head (the head width; MLA's rope_head_dim)."""
        return self.attention_dims.rotary_dim

    def parameter_shapes(self, vocab_size: int) -> Shapes:
        """(name, shape) of every parameter `build_model` registers, in its order and with its names
        (compiler/model.py's docstring lists them), as each kind reports its own. A tied output head
        is not listed twice. Names do not depend on `vocab_size`."""
        d, block = self.d_model, self.block
        shapes: Shapes = [("embed.weight", (vocab_size, d))]
        shapes += self.position.parameter_shapes("pos_embed.", d, self.max_seq_len)
        for i in range(self.n_layers):
            prefix = f"blocks.{i}."
            shapes += block.norm.parameter_shapes(prefix + "attn_norm.", d)
            shapes += block.attention.parameter_shapes(prefix + "attn.", d)
            shapes += block.norm.parameter_shapes(prefix + "mlp_norm.", d)
            shapes += block.mlp.parameter_shapes(prefix + "mlp.", d)
        shapes += block.norm.parameter_shapes("norm.", d)
        if not self.tie_embeddings:
            shapes.append(("lm_head.weight", (vocab_size, d)))
        return shapes
