"""The `model:` section: a decoder-only model, layer by layer.

The kinds a block chooses from (attention, mlp, norm, position) are spec classes of their own in
schemas/blocks/, with their torch-free facts; this module joins them into discriminated unions.
A layer is itself a block kind (`Block`: `transformer` is the default kind, written without `kind`).

Layer patterns: `model.block` is every layer's block unless `model.layers` overrides it on a range
of layers (start, stop, step as Python's range; stop defaults to n_layers). One form covers
DeepSeek-V3's first k dense layers then MoE, and Jamba's attention every n-th layer:

    model:
      n_layers: 8
      block: {attention: ..., mlp: {kind: moe, ...}}      # the default block
      layers:
        - start: 0                                        # layers 0, 1: dense
          stop: 2
          block: {attention: ..., mlp: {kind: swiglu, hidden: 256}}

The ranges must lie inside n_layers and must not overlap. `Model.layer_blocks` is each layer's
block; `Model.block_path(i)` the spec path it comes from.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from .base import SpecModel, field_error, kind_with_default
from .blocks.block import BlockSpec, norm_bytes
from .blocks.costs import Shapes, Storage
from .blocks.attention import GQA, MHA, MQA, AttentionBias, AttentionDims, AttentionSpec
from .blocks.mamba import MambaDims, MambaMixer
from .blocks.mla import MLA, LatentAttentionBias
from .blocks.mlp import GeluMLP, MLPSpec, SwigluMLP
from .blocks.moe import MoEMLP
from .blocks.norm import LayerNorm, NormSpec, RMSNorm
from .blocks.position import LearnedPositions, NoPositions, PositionSpec, Rope, RopeScaling
from .blocks.sparsity import Backend, MaskPattern, SparseAttention
from .init import FromWeights, GPT2Init, Init, TabulaPrimaInit
from .kernels import Kernels
from .vision import Vision

# A new kind is one class in schemas/blocks/ and one member here.
Attention = Annotated[Union[MHA, GQA, MQA, MLA], Field(discriminator="kind")]
Position = Annotated[Union[Rope, LearnedPositions, NoPositions], Field(discriminator="kind")]
Norm = Annotated[Union[RMSNorm, LayerNorm], Field(discriminator="kind")]
MLP = Annotated[Union[GeluMLP, SwigluMLP, MoEMLP], Field(discriminator="kind")]

__all__ = [
    "MHA", "GQA", "MQA", "MLA", "AttentionBias", "LatentAttentionBias", "AttentionDims", "AttentionSpec", "Attention",
    "Rope", "RopeScaling", "LearnedPositions", "NoPositions", "PositionSpec", "Position",
    "RMSNorm", "LayerNorm", "NormSpec", "Norm", "GeluMLP", "SwigluMLP", "MoEMLP", "MLPSpec", "MLP",
    "GPT2Init", "TabulaPrimaInit", "FromWeights", "Init", "BlockSpec", "TransformerBlock", "MambaBlock", "MambaMixer", "MambaDims", "Block", "Layers", "Compile", "Model",
    "SparseAttention", "MaskPattern", "Kernels",
]


class TransformerBlock(BlockSpec):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    # the default kind: its canonical form leaves `kind` out, as specs written before block kinds do
    canonical_omit: ClassVar[dict[str, Any]] = {"kind": "transformer"}

    kind: Literal["transformer"] = Field(
        default="transformer", description="A pre-norm transformer block: attention, then the MLP (the default; `kind` may be left out)."
    )
    norm: Norm = Field(default_factory=lambda: RMSNorm(kind="rmsnorm"), description="The norm before attention, before the MLP and at the end of the model.")
    attention: Attention = Field(description="The attention variant and its heads.")
    mlp: MLP = Field(description="The feed-forward network.")

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        return (self.norm.parameter_shapes(prefix + "attn_norm.", d_model) + self.attention.parameter_shapes(prefix + "attn.", d_model)
                + self.norm.parameter_shapes(prefix + "mlp_norm.", d_model) + self.mlp.parameter_shapes(prefix + "mlp.", d_model))

    def active_parameters(self, d_model: int) -> int:
        return self.parameters(d_model) - self.mlp.parameters(d_model) + self.mlp.active_parameters(d_model)

    def flops_per_token(self, d_model: int, seq_len: int) -> int:
        return 2 * self.norm.flops_per_token(d_model) + self.attention.flops_per_token(d_model, seq_len) + self.mlp.flops_per_token(d_model)

    def activation_bytes_per_token(self, d_model: int, seq_len: int, storage: Storage, dropout: float) -> int:
        """Its norms, attention and MLP kinds' bytes, and dropout's one-byte masks on both residual branches."""
        total = norm_bytes(self.norm, d_model, storage, self.attention.input_readers)
        total += self.attention.activation_bytes_per_token(d_model, seq_len, storage, dropout)
        total += norm_bytes(self.norm, d_model, storage, self.mlp.input_readers)
        total += self.mlp.activation_bytes_per_token(d_model, storage)
        return total + (2 * d_model if dropout > 0 else 0)

    def check(self, d_model: int, *, rotary: bool) -> None:
        self.attention.check(d_model, rotary=rotary)

    @property
    def window(self) -> int | None:
        return self.attention.window

    @property
    def pattern(self) -> MaskPattern:
        return self.attention.pattern

    @property
    def attention_backend(self) -> Backend:
        return self.attention.backend

    def attention_dims(self, d_model: int) -> AttentionDims:
        return self.attention.dims(d_model)

    def summary(self) -> str:
        window = f" window {self.attention.window}" if self.attention.window else ""
        sparse = " + sparse" if self.attention.sparse is not None else ""
        flex = " (flex)" if self.attention.backend == "flex" else ""
        return f"{self.attention.kind}{window}{sparse}{flex} + {self.mlp.summary()}"


class MambaBlock(BlockSpec):
    """A Mamba layer: x + mixer(norm(x)), then, with an MLP, x + mlp(norm(x)) (Jamba's layers).
    The mixer's widths and facts are schemas/blocks/mamba.py's; it has no attention (no positions)."""

    kind: Literal["mamba"] = Field(
        description="A Mamba-1 layer: the selective state-space mixer in place of attention (Mamba; Jamba's non-attention layers).")
    norm: Norm = Field(default_factory=lambda: RMSNorm(kind="rmsnorm"), description="The norm before the mixer and before the MLP.")
    mixer: MambaMixer = Field(default_factory=MambaMixer, description="The selective state-space mixer: state width, convolution, expansion.")
    mlp: MLP | None = Field(
        default=None, description="A feed-forward network after the mixer (Jamba's layers have one); null: none, as Mamba's layers.")

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        shapes = self.norm.parameter_shapes(prefix + "norm.", d_model) + self.mixer.parameter_shapes(prefix + "mixer.", d_model)
        if self.mlp is not None:
            shapes += self.norm.parameter_shapes(prefix + "mlp_norm.", d_model) + self.mlp.parameter_shapes(prefix + "mlp.", d_model)
        return shapes

    def active_parameters(self, d_model: int) -> int:
        if self.mlp is None:
            return self.parameters(d_model)
        return self.parameters(d_model) - self.mlp.parameters(d_model) + self.mlp.active_parameters(d_model)

    def flops_per_token(self, d_model: int, seq_len: int) -> int:
        """The norm's, the mixer's (no term grows with seq_len) and the MLP's."""
        mlp = self.norm.flops_per_token(d_model) + self.mlp.flops_per_token(d_model) if self.mlp is not None else 0
        return self.norm.flops_per_token(d_model) + self.mixer.flops_per_token(d_model) + mlp

    def activation_bytes_per_token(self, d_model: int, seq_len: int, storage: Storage, dropout: float) -> int:
        """Its norms, mixer and MLP kinds' bytes, and dropout's one-byte mask on each residual branch."""
        total = norm_bytes(self.norm, d_model, storage, 1) + self.mixer.activation_bytes_per_token(d_model, storage)
        if self.mlp is not None:
            total += norm_bytes(self.norm, d_model, storage, self.mlp.input_readers) + self.mlp.activation_bytes_per_token(d_model, storage)
        branches = 1 if self.mlp is None else 2
        return total + (branches * d_model if dropout > 0 else 0)

    def mamba_dims(self, d_model: int) -> MambaDims:
        """The mixer's derived widths."""
        return self.mixer.dims(d_model)

    def summary(self) -> str:
        mlp = f" + {self.mlp.summary()}" if self.mlp is not None else ""
        return f"mamba d_state {self.mixer.d_state} x{self.mixer.expand}{mlp}"


# A new block kind is one class in schemas/blocks/ (a BlockSpec) and one member here.
Block = Annotated[Union[Annotated[TransformerBlock, Tag("transformer")], Annotated[MambaBlock, Tag("mamba")]],
                  kind_with_default("transformer")]


class Layers(SpecModel):
    """Layers range(start, stop, step) use `block` instead of model.block."""

    start: int = Field(ge=0, description="First layer the override applies to (layers count from 0).")
    stop: int | None = Field(default=None, gt=0, description="First layer past the range (exclusive, as Python's range); null: n_layers.")
    step: int = Field(default=1, gt=0, description="Every step-th layer from start: 1 for a contiguous range, n for every n-th layer (Jamba's attention layers).")
    block: Block = Field(description="The block these layers use (a whole block: YAML anchors share parts with model.block).")

    def indices(self, n_layers: int) -> range:
        """The layers the override covers in a model of n_layers."""
        return range(self.start, n_layers if self.stop is None else self.stop, self.step)


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
    block: Block = Field(description="The block every layer uses unless `layers` overrides it (the transformer block by default kind).")
    layers: list[Layers] = Field(
        default_factory=list,
        description="Per-layer overrides of `block` by index ranges (start, stop, step as Python's range): DeepSeek-V3's first "
                    "k dense layers, Jamba's attention every n-th layer. Ranges lie inside n_layers and do not overlap.",
    )
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output projection (saves vocab x d_model parameters).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on attention weights and residual branches; 0 for pretraining.")
    init: Init = Field(
        default_factory=lambda: GPT2Init(kind="gpt2"),
        description="Weight initialisation scheme: gpt2 (the default; `kind` may be left out) or tabulaprima (the original TabulaPrima model's); "
                    "or from: every weight loaded from a pretrained model (a Hugging Face checkpoint, hf:org/name, a tabula run).",
    )
    compile: Compile = Field(default_factory=Compile, description="torch.compile policy.")
    kernels: Kernels = Field(default_factory=Kernels, description="Which implementation computes the loss, norms, RoPE and SwiGLU (same results; memory and speed differ).")
    vision: Vision | None = Field(
        default=None,
        description="An image encoder and projector for image-text training (needs a kind: image_text source); null: text only.")

    # a spec without overrides (or without vision) keeps its canonical form
    canonical_omit: ClassVar[dict[str, Any]] = {"layers": [], "vision": None}

    @model_validator(mode="after")
    def _shapes_agree(self) -> Model:
        if isinstance(self.vocab_size, int) and self.vocab_size <= 0:
            raise field_error("vocab_size", f"vocab_size must be positive or auto, found {self.vocab_size}")
        if isinstance(self.init, FromWeights) and not isinstance(self.vocab_size, int):
            raise field_error("vocab_size", "with init kind from, vocab_size must be the pretrained model's (a number), not auto")
        self._check_layers()
        for block, path in self._distinct_blocks():
            try:
                block.check(self.d_model, rotary=self.position.rotary)
            except PydanticCustomError as error:
                raise _repath(error, path) from None
        rotary = {dims.rotary_dim for block, _ in self._distinct_blocks() if (dims := block.attention_dims(self.d_model)) is not None}
        if self.position.rotary and not rotary:
            raise field_error(("position", "kind"), "rope positions rotate attention's queries and keys, and no layer has attention: "
                                                    "set position kind none (Mamba layers need no positions)")
        if len(rotary) > 1:
            raise field_error("layers", f"every attention layer shares the model's RoPE tables: their rotary widths differ ({sorted(rotary)})")
        for block, path in self._distinct_blocks():
            if block.attention_backend == "flex" and self.dropout > 0:
                raise field_error((*path, "attention", "backend"), f"FlexAttention has no attention dropout and model.dropout is "
                                                                   f"{self.dropout}: set dropout to 0, or backend sdpa")
        return self

    def _check_layers(self) -> None:
        ranges: list[range] = []
        for j, override in enumerate(self.layers):
            stop = self.n_layers if override.stop is None else override.stop
            if override.start >= self.n_layers:
                raise field_error(("layers", j, "start"), f"layers[{j}].start ({override.start}) must be below n_layers ({self.n_layers})")
            if stop > self.n_layers:
                raise field_error(("layers", j, "stop"), f"layers[{j}].stop ({stop}) must be at most n_layers ({self.n_layers})")
            if stop <= override.start:
                raise field_error(("layers", j, "stop"), f"layers[{j}] covers no layer: stop ({stop}) must be above start ({override.start})")
            here = override.indices(self.n_layers)
            for k, other in enumerate(ranges):
                shared = _first_shared(here, other)
                if shared is not None:
                    raise field_error(("layers", j, "start"), f"layers[{j}] overlaps layers[{k}] at layer {shared}: each layer has one block")
            ranges.append(here)

    def _distinct_blocks(self) -> list[tuple[BlockSpec, tuple[Any, ...]]]:
        """The default block and each override's, with their paths below `model`."""
        return [(self.block, ("block",))] + [(o.block, ("layers", j, "block")) for j, o in enumerate(self.layers)]

    @property
    def layer_blocks(self) -> tuple[BlockSpec, ...]:
        """Each layer's block: model.block, or the override whose range holds the layer."""
        blocks: list[BlockSpec] = [self.block] * self.n_layers
        for override in self.layers:
            for i in override.indices(self.n_layers):
                blocks[i] = override.block
        return tuple(blocks)

    def block_path(self, layer: int) -> str:
        """The spec path of layer `layer`'s block: model.block or model.layers.<j>.block."""
        for j, override in enumerate(self.layers):
            if layer in override.indices(self.n_layers):
                return f"model.layers.{j}.block"
        return "model.block"

    @property
    def patterned(self) -> bool:
        """Whether the layers differ (some override exists)."""
        return bool(self.layers)

    @property
    def attention_dims(self) -> AttentionDims:
        """The attention's derived widths (heads, key/value heads, head and value widths, rotary width):
        the default block's, or the first attention layer's where the default block has none."""
        for block, _ in self._distinct_blocks():
            dims = block.attention_dims(self.d_model)
            if dims is not None:
                return dims
        raise ValueError("the model has no attention layer")

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
        d = self.d_model
        shapes: Shapes = [("embed.weight", (vocab_size, d))]
        shapes += self.position.parameter_shapes("pos_embed.", d, self.max_seq_len)
        for i, block in enumerate(self.layer_blocks):
            shapes += block.parameter_shapes(f"blocks.{i}.", d)
        shapes += self.block.norm.parameter_shapes("norm.", d)
        if not self.tie_embeddings:
            shapes.append(("lm_head.weight", (vocab_size, d)))
        if self.vision is not None:
            shapes += self.vision.parameter_shapes("vision.", d)
        return shapes


def _repath(error: PydanticCustomError, path: tuple[Any, ...]) -> PydanticCustomError:
    """A block's check error (its path below `model` starting with "block") moved to the block at `path`."""
    context = dict(error.context or {})
    field = list(context.get("field", []))
    if field[:1] == ["block"]:
        context["field"] = [*path, *field[1:]]
    return PydanticCustomError(error.type, error.message_template, context)


def _first_shared(a: range, b: range) -> int | None:
    """The first layer both ranges hold, or None; in at most b.step steps (n_layers may be huge)."""
    x = max(a.start, b.start)
    x = a.start + -(-(x - a.start) // a.step) * a.step  # a's first element at or past both starts
    for _ in range(b.step):
        if x >= min(a.stop, b.stop):
            return None
        if x >= b.start and (x - b.start) % b.step == 0:
            return x
        x += a.step
    return None
