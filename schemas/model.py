"""The `model:` section: a decoder-only transformer, block by block."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from .base import SpecModel, field_error

# ---------------------------------------------------------------- attention


class _AttentionBase(SpecModel):
    n_heads: int = Field(gt=0, description="Number of query heads; d_model must be divisible by it unless head_dim is set.")
    head_dim: int | None = Field(
        default=None, gt=0, description="Width of each head; null means d_model / n_heads."
    )
    window: int | None = Field(
        default=None,
        gt=0,
        description="Sliding-window attention: each token sees at most this many previous tokens (itself included); null attends to the whole context.",
    )
    qk_norm: bool = Field(default=False, description="RMS-normalise queries and keys per head before the dot product (stabilises large learning rates).")
    bias: bool = Field(default=False, description="Add biases to the query, key, value and output projections.")


class MHA(_AttentionBase):
    """Multi-head attention: one key/value head per query head."""

    kind: Literal["mha"] = Field(description="Multi-head attention (every query head has its own key/value head).")


class GQA(_AttentionBase):
    """Grouped-query attention: query heads share key/value heads in groups."""

    kind: Literal["gqa"] = Field(description="Grouped-query attention (Llama 2/3, Mistral).")
    n_kv_heads: int = Field(gt=0, description="Number of key/value heads; must divide n_heads. Fewer heads shrink the KV cache.")

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> GQA:
        if self.n_heads % self.n_kv_heads:
            raise field_error(
                "n_kv_heads",
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})",
            )
        return self


class MQA(_AttentionBase):
    """Multi-query attention: all query heads share one key/value head."""

    kind: Literal["mqa"] = Field(description="Multi-query attention (one key/value head shared by all query heads).")


class MLA(_AttentionBase):
    """Multi-head latent attention (DeepSeek-V2): low-rank q and kv latents, decoupled RoPE."""

    kind: Literal["mla"] = Field(description="Multi-head latent attention (DeepSeek-V2/V3, TabulaPrima).")
    q_latent: int | None = Field(
        default=None, gt=0, description="Rank of the query latent; null projects queries directly from the hidden state."
    )
    kv_latent: int = Field(gt=0, description="Rank of the compressed key/value latent (what a KV cache would store).")
    rope_head_dim: int = Field(
        gt=0, description="Width of the decoupled RoPE part of each query/key head; must be smaller than the head width."
    )
    v_head_dim: int | None = Field(default=None, gt=0, description="Width of each value head; null means the head width.")
    latent_norm: bool = Field(
        default=False, description="RMSNorm on the q and kv latents, as DeepSeek-V3 has (off for the TabulaPrima models)."
    )


Attention = Annotated[Union[MHA, GQA, MQA, MLA], Field(discriminator="kind")]

# ---------------------------------------------------------------- positions


class RopeScaling(SpecModel):
    kind: Literal["linear", "ntk"] = Field(
        description="linear: positions divided by factor (position interpolation); ntk: theta scaled so high frequencies are kept."
    )
    factor: float = Field(gt=1.0, description="How many times longer than the trained context the model should read.")


class Rope(SpecModel):
    kind: Literal["rope"] = Field(description="Rotary position embeddings applied to queries and keys.")
    theta: float = Field(default=10000.0, gt=0, description="RoPE base; larger values suit longer contexts (Llama 3 uses 500000).")
    scaling: RopeScaling | None = Field(default=None, description="Optional scaling to read contexts longer than trained.")


class LearnedPositions(SpecModel):
    kind: Literal["learned"] = Field(description="A learned position embedding added to the token embedding (GPT-2).")


class NoPositions(SpecModel):
    kind: Literal["none"] = Field(description="No position information (NoPE); causal masking alone orders tokens.")


Position = Annotated[Union[Rope, LearnedPositions, NoPositions], Field(discriminator="kind")]

# ---------------------------------------------------------------- norms and mlps


class RMSNorm(SpecModel):
    kind: Literal["rmsnorm"] = Field(description="Root-mean-square norm with a learned scale (Llama).")
    eps: float = Field(default=1e-5, gt=0, description="Added to the mean square for numerical stability.")


class LayerNorm(SpecModel):
    kind: Literal["layernorm"] = Field(description="Layer norm with a learned scale and optional bias (GPT-2, TabulaPrima).")
    eps: float = Field(default=1e-5, gt=0, description="Added to the variance for numerical stability.")
    bias: bool = Field(default=True, description="Learn a bias as well as a scale.")


Norm = Annotated[Union[RMSNorm, LayerNorm], Field(discriminator="kind")]


class GeluMLP(SpecModel):
    kind: Literal["gelu"] = Field(description="Two projections with a GELU between them (GPT-2, TabulaPrima).")
    hidden: int = Field(gt=0, description="Width of the hidden layer (typically 4 x d_model).")
    bias: bool = Field(default=True, description="Add biases to both projections.")


class SwigluMLP(SpecModel):
    kind: Literal["swiglu"] = Field(description="Gated MLP with a SiLU gate (Llama); three projections.")
    hidden: int = Field(gt=0, description="Width of the gated hidden layer (typically 8/3 x d_model, rounded).")
    bias: bool = Field(default=False, description="Add biases to the three projections.")


MLP = Annotated[Union[GeluMLP, SwigluMLP], Field(discriminator="kind")]

# ---------------------------------------------------------------- block and model


class Block(SpecModel):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    norm: Norm = Field(default_factory=lambda: RMSNorm(kind="rmsnorm"), description="The norm before attention, before the MLP and at the end of the model.")
    attention: Attention = Field(description="The attention variant and its heads.")
    mlp: MLP = Field(description="The feed-forward network.")


class Init(SpecModel):
    std: float = Field(default=0.02, gt=0, description="Standard deviation of the normal initialisation of weights.")
    scale_residual: bool = Field(
        default=True,
        description="Scale the std of projections into the residual stream by 1/sqrt(2 x n_layers) (GPT-2).",
    )


class Compile(SpecModel):
    enabled: Literal["auto"] | bool = Field(
        default="auto",
        description="torch.compile the model: auto compiles where it measurably pays (a CUDA GPU), true and false force it.",
    )
    scope: Literal["block", "model"] = Field(
        default="block",
        description="block compiles each transformer block once and reuses it (same speed, far shorter compile); model compiles the whole forward.",
    )
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="default", description="torch.compile mode."
    )
    fullgraph: bool = Field(default=False, description="Fail instead of falling back when a graph break occurs.")


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
    init: Init = Field(default_factory=Init, description="Weight initialisation.")
    compile: Compile = Field(default_factory=Compile, description="torch.compile policy.")

    @model_validator(mode="after")
    def _shapes_agree(self) -> Model:
        attn = self.block.attention
        if isinstance(self.vocab_size, int) and self.vocab_size <= 0:
            raise field_error("vocab_size", f"vocab_size must be positive or auto, found {self.vocab_size}")
        if attn.head_dim is None and self.d_model % attn.n_heads:
            raise field_error(
                ("block", "attention", "n_heads"),
                f"d_model ({self.d_model}) must be divisible by n_heads ({attn.n_heads}), or set head_dim",
            )
        if isinstance(attn, MLA):
            head_dim = self.head_dim
            if attn.rope_head_dim >= head_dim:
                raise field_error(
                    ("block", "attention", "rope_head_dim"),
                    f"rope_head_dim ({attn.rope_head_dim}) must be smaller than the head width ({head_dim})",
                )
            if attn.rope_head_dim % 2:
                raise field_error(("block", "attention", "rope_head_dim"), f"rope_head_dim ({attn.rope_head_dim}) must be even")
            if self.position.kind != "rope":
                raise field_error(("position", "kind"), "MLA attention needs rope positions (its decoupled key/query parts are rotary)")
        elif self.position.kind == "rope" and self.head_dim % 2:
            raise field_error(("block", "attention", "n_heads"), f"RoPE needs an even head width, found {self.head_dim}")
        return self

    @property
    def head_dim(self) -> int:
        """Width of each attention head (derived: head_dim or d_model / n_heads)."""
        attn = self.block.attention
        return attn.head_dim if attn.head_dim is not None else self.d_model // attn.n_heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (derived from the attention kind)."""
        attn = self.block.attention
        if isinstance(attn, GQA):
            return attn.n_kv_heads
        if isinstance(attn, MQA):
            return 1
        return attn.n_heads
