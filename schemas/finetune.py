"""`train.finetune:` how a run adapts a model instead of training all of it, one method a `kind`.

    lora            low-rank updates B A on the targeted linear layers; the base frozen (peft's LoRA)
    dora            LoRA with a learned magnitude per output row (peft's DoRA)
    qlora           LoRA over a base held in 4 bits (bitsandbytes; CUDA only)
    prompt_tuning   learned virtual token embeddings before every sequence (peft's PromptEmbedding)
    prefix_tuning   learned keys and values before every layer's own (peft's PrefixEncoder)
    full            every parameter trained, except those `freeze` names

Targets and frozen parameters are named by tabula's parameter and module names (compiler/model.py's
docstring lists them) with shell-style globs: `blocks.*.attn.q_proj`, `mlp.*`, `embed.*`. A glob matches
a name when it matches the whole name or a part of it after a dot (`mlp.*` matches `blocks.3.mlp.up`, as
peft matches its target names by suffix). Each class answers torch-free what it trains and adds
(`frozen`, `added_shapes`, `trainable_shapes`), so `tabula plan` counts trainable parameters and the memory they need
without building anything; the Spec checks every glob against the model's names (`check`).
"""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import Field

from .base import SpecModel, field_error

if TYPE_CHECKING:
    from .blocks.costs import Shapes
    from .model import Model


def glob_matches(pattern: str, name: str) -> bool:
    """Whether the glob `pattern` matches `name` whole or a part of it after a dot."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def _collapsed(names: list[str]) -> tuple[list[str], set[int]]:
    """Names with their block index written `*` (each once, in order), and the block indices."""
    seen: dict[str, None] = {}
    blocks = set()
    for name in names:
        match = re.match(r"blocks\.(\d+)\.(.*)", name)
        if match:
            blocks.add(int(match.group(1)))
            seen[f"blocks.*.{match.group(2)}"] = None
        else:
            seen[name] = None
    return list(seen), blocks


def summarise_names(names: list[str]) -> str:
    """Names with their block index written `*`, and the blocks there are:
    'blocks.*.attn.q_proj, ..., lm_head (blocks.* is blocks 0-3)'."""
    collapsed, blocks = _collapsed(names)
    text = ", ".join(collapsed)
    if len(blocks) > 1:
        text += f" (blocks.* is blocks {min(blocks)}-{max(blocks)})"
    elif blocks:
        text += f" (blocks.* is block {min(blocks)})"
    return text


def check_globs(field: str, patterns: list[str], names: list[str], what: str) -> None:
    """A field error at `train.finetune.<field>.<i>` for the first glob matching none of `names`."""
    for index, pattern in enumerate(patterns):
        if not any(glob_matches(pattern, name) for name in names):
            close = difflib.get_close_matches(pattern, _collapsed(names)[0], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise field_error(("train", "finetune", field, index),
                              f"{pattern!r} matches no {what}{hint}; the {what}s are: {summarise_names(names)}")


def linear_modules(shapes: Shapes) -> dict[str, tuple[int, int]]:
    """The model's linear layers an adapter may target: module name -> (out features, in features).
    Every 2-D weight but the token and position embeddings (an untied output head is one)."""
    skip = ("embed.weight", "pos_embed.weight")
    return {name[: -len(".weight")]: shape for name, shape in shapes
            if name.endswith(".weight") and len(shape) == 2 and name not in skip}


class _Method(SpecModel):
    """What every method answers."""

    freezes_base: ClassVar[bool] = True  # every base parameter is frozen (adapters); `full` decides per name

    def frozen(self, names: list[str]) -> set[str]:
        """The base parameters (of `names`) the method holds fixed."""
        return set(names)

    def added_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        """(name, shape) of the parameters the method adds to the model (all trainable), named as
        apply_finetune registers them, given the model's own `shapes`."""
        raise NotImplementedError

    def trainable_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        """(name, shape) of every parameter the optimizer updates: the base's not frozen, then the added."""
        frozen = self.frozen([name for name, _ in shapes])
        return [(name, shape) for name, shape in shapes if name not in frozen] + self.added_shapes(model, shapes)

    def check(self, model: Model, shapes: Shapes) -> None:
        """Field errors for what does not fit the model (paths below the spec's root)."""


class _LowRank(_Method):
    """Options every LoRA variant shares."""

    rank: int = Field(default=8, gt=0, description="r: the rank of the update B A added to each targeted weight (B: out x r, A: r x in).")
    alpha: float = Field(default=16.0, gt=0, description="The update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input while training; the frozen path sees the input unchanged.")
    rslora: bool = Field(default=False, description="Rank-stabilised LoRA: scale by alpha / sqrt(rank), so a larger rank keeps learning (Kalajdzievski 2023).")
    targets: list[str] = Field(
        default_factory=lambda: ["attn.*", "mlp.*"],
        min_length=1,
        description=(
            "The linear layers adapted, as globs over tabula's module names: blocks.*.attn.q_proj, attn.*, mlp.*, "
            "blocks.0.mlp.up, lm_head (untied only). A glob matches a name whole or after a dot; one that matches "
            "no linear layer is an error listing them."
        ),
    )
    init: Literal["default", "gaussian"] = Field(
        default="default",
        description="How A starts (B starts at zero, so training starts from the base model): default is peft's Kaiming-uniform, gaussian draws A from N(0, 1/rank).",
    )

    magnitude: ClassVar[bool] = False  # DoRA's learned magnitude per output row

    def targeted(self, shapes: Shapes) -> dict[str, tuple[int, int]]:
        """The linear layers the targets match: module name -> (out, in), in the model's order."""
        return {name: shape for name, shape in linear_modules(shapes).items() if any(glob_matches(t, name) for t in self.targets)}

    def added_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        # A (r x in) and B (out x r) per targeted layer (peft's names); DoRA adds a magnitude (out)
        added: Shapes = []
        for name, (n_out, n_in) in self.targeted(shapes).items():
            added += [(f"{name}.lora_A.default.weight", (self.rank, n_in)), (f"{name}.lora_B.default.weight", (n_out, self.rank))]
            if self.magnitude:
                added.append((f"{name}.lora_magnitude_vector.default.weight", (n_out,)))
        return added

    def check(self, model: Model, shapes: Shapes) -> None:
        check_globs("targets", self.targets, list(linear_modules(shapes)), "linear layer")


class Lora(_LowRank):
    kind: Literal["lora"] = Field(description="LoRA (Hu et al. 2021): a trainable low-rank update on each targeted linear layer; every base weight frozen.")


class Dora(_LowRank):
    kind: Literal["dora"] = Field(
        description="DoRA (Liu et al. 2024): LoRA's update as a direction, with a learned magnitude per output row (peft's use_dora); every base weight frozen."
    )

    magnitude: ClassVar[bool] = True


class QLora(_LowRank):
    kind: Literal["qlora"] = Field(
        description="QLoRA (Dettmers et al. 2023): LoRA over a base whose linear layers are held in 4 bits by bitsandbytes. Needs a CUDA GPU."
    )
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="The 4-bit number format of the frozen weights: nf4 (normal float, QLoRA's) or fp4.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too (about 0.4 bits a parameter saved).")

    # bitsandbytes' block of 64 weights shares one fp32 constant; double quantisation stores it in 8 bits
    # with an fp32 constant per 256 blocks
    BLOCK: ClassVar[int] = 64

    def quantized_bytes(self, n: int) -> float:
        """Bytes `n` weights take in 4 bits with their quantisation constants."""
        constants = (1 + 4 / 256) / self.BLOCK if self.double_quant else 4 / self.BLOCK
        return n * (0.5 + constants)


class PromptTuning(_Method):
    kind: Literal["prompt_tuning"] = Field(
        description="Prompt tuning (Lester et al. 2021): virtual_tokens learned embeddings before every sequence; the whole model frozen."
    )
    virtual_tokens: int = Field(default=20, gt=0, description="How many virtual tokens; each sequence then takes this many positions more (seq_len + virtual_tokens <= model.max_seq_len).")
    init: Literal["sample_vocab", "random"] = Field(
        default="sample_vocab",
        description="sample_vocab starts each virtual token as the embedding of a random vocabulary token (peft's SAMPLE_VOCAB); random as N(0, 1) (peft's RANDOM).",
    )

    def added_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        return [("virtual_tokens.encoder.embedding.weight", (self.virtual_tokens, model.d_model))]


class PrefixTuning(_Method):
    kind: Literal["prefix_tuning"] = Field(
        description="Prefix tuning (Li and Liang 2021): virtual_tokens learned keys and values before each layer's own; the whole model frozen. mha, gqa and mqa attention."
    )
    virtual_tokens: int = Field(default=20, gt=0, description="How many virtual key/value positions each layer sees before the sequence (seq_len + virtual_tokens <= model.max_seq_len).")
    projection: bool = Field(
        default=False,
        description="Reparametrise the prefix through a two-layer MLP (peft's prefix_projection): more parameters while training; the export holds the computed prefix.",
    )
    projection_hidden: int | None = Field(default=None, gt=0, description="Hidden width of that MLP; null: the key/value width (n_kv_heads x head_dim), peft's default.")
    init: Literal["default", "zero"] = Field(default="default", description="default: peft's (N(0, 1) embeddings); zero: the prefix starts at zero (peft's init_weights: zero).")

    def token_dim(self, model: Model) -> int:
        """Width of one layer's keys (and values) at one position: n_kv_heads x head_dim (peft's token_dim)."""
        dims = model.attention_dims
        return dims.n_kv_heads * dims.head_dim

    def added_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        # peft's PrefixEncoder: the prefix itself, or embeddings and a two-layer MLP that computes it
        width, out, prefix = self.token_dim(model), 2 * model.n_layers * self.token_dim(model), "virtual_tokens.encoder."
        if not self.projection:
            return [(prefix + "embedding.weight", (self.virtual_tokens, out))]
        hidden = self.projection_hidden or width
        return [(prefix + "embedding.weight", (self.virtual_tokens, width)), (prefix + "transform.0.weight", (hidden, width)),
                (prefix + "transform.0.bias", (hidden,)), (prefix + "transform.2.weight", (out, hidden)), (prefix + "transform.2.bias", (out,))]

    def check(self, model: Model, shapes: Shapes) -> None:
        if any(block.kind != "transformer" for block in model.layer_blocks):
            raise field_error(("train", "finetune", "kind"), "prefix tuning prepends keys and values to every layer's attention; "
                              "this model has layers without attention (Mamba)")
        dims, attention = model.attention_dims, getattr(model.block, "attention")
        if attention.kind == "mla" or dims.head_dim != dims.v_head_dim:
            raise field_error(("train", "finetune", "kind"), f"prefix tuning needs keys and values of one width (mha, gqa, mqa attention); "
                              f"model.block.attention is {attention.kind}")


class Full(_Method):
    kind: Literal["full"] = Field(description="Full fine-tuning: every parameter trained except those `freeze` names.")
    freeze: list[str] = Field(
        default_factory=list,
        description="Parameters held fixed, as globs over tabula's parameter names: embed.*, blocks.0.*, blocks.*.attn_norm.weight. One that matches nothing is an error listing the names.",
    )

    freezes_base: ClassVar[bool] = False

    def frozen(self, names: list[str]) -> set[str]:
        return {name for name in names if any(glob_matches(pattern, name) for pattern in self.freeze)}

    def added_shapes(self, model: Model, shapes: Shapes) -> Shapes:
        return []

    def check(self, model: Model, shapes: Shapes) -> None:
        check_globs("freeze", self.freeze, [name for name, _ in shapes], "parameter")


Finetune = Annotated[Union[Lora, Dora, QLora, PromptTuning, PrefixTuning, Full], Field(discriminator="kind")]
LOW_RANK = ("lora", "dora", "qlora")
VIRTUAL_TOKENS = ("prompt_tuning", "prefix_tuning")


def virtual_tokens(finetune: object) -> int:
    """Positions a method adds before every sequence (prompt and prefix tuning), else 0."""
    return finetune.virtual_tokens if isinstance(finetune, (PromptTuning, PrefixTuning)) else 0


__all__ = ["Finetune", "Lora", "Dora", "QLora", "PromptTuning", "PrefixTuning", "Full", "LOW_RANK", "VIRTUAL_TOKENS",
           "glob_matches", "linear_modules", "summarise_names", "virtual_tokens"]
