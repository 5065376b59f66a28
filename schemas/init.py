"""The `model.init:` schemes: how a model's weights are drawn before training, or where they come from.

Every drawing scheme draws each weight from a normal distribution whose standard deviation depends
on the weight's role; a scheme is therefore the function `weight_std`, torch-free. Biases start at
zero and norm scales at one under every scheme. Each module of compiler/blocks applies it to its
own parameters (`init_weights`), each parameter drawing from a generator seeded by (seed, name).
`from` loads pretrained weights instead (runtime/pretrained.py), after the model is built.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Union

from pydantic import Field, Tag, field_validator

from .base import SpecModel, kind_with_default

# What a weight is for: the token embedding (and learned positions), an attention projection,
# an MLP projection, the output head (when not tied to the embedding).
Role = Literal["embedding", "attention", "mlp", "output"]


class GPT2Init(SpecModel):
    """GPT-2's scheme, the default."""

    kind: Literal["gpt2"] = Field(
        default="gpt2",
        description="GPT-2's: every weight normal(0, std); with scale_residual, the projections into the residual stream (attention output, MLP down) normal(0, std / sqrt(2 x n_layers)). Biases zero, norm scales one.",
    )
    std: float = Field(default=0.02, gt=0, description="Standard deviation of the normal initialisation of weights.")
    scale_residual: bool = Field(
        default=True,
        description="Scale the std of projections into the residual stream by 1/sqrt(2 x n_layers) (GPT-2).",
    )

    def weight_std(self, role: Role, *, residual: bool, fan_in: int, head_dim: int, n_layers: int) -> float:
        """The std of a weight of `role` (`residual`: it writes into the residual stream)."""
        if residual and self.scale_residual:
            return self.std / math.sqrt(2 * n_layers)
        return self.std


class TabulaPrimaInit(SpecModel):
    """The original TabulaPrima model's scheme (its model_arch.py `_init_weights`)."""

    kind: Literal["tabulaprima"] = Field(
        description="The original TabulaPrima's: attention weights normal(0, std / sqrt(head width)); MLP weights (and an untied output head) Kaiming-normal, fan-in, leaky-ReLU gain with slope kaiming_a, i.e. normal(0, sqrt(2 / (1 + a^2)) / sqrt(fan_in)); the embedding (and learned positions) normal(0, std). Biases zero, norm scales one; no residual scaling.",
    )
    std: float = Field(default=0.02, gt=0, description="Standard deviation of the embedding; attention weights take std / sqrt(head width).")
    kaiming_a: float = Field(
        default=0.01, ge=0, description="Negative slope of the leaky ReLU whose gain the Kaiming-normal MLP weights use (torch's `a`)."
    )

    def weight_std(self, role: Role, *, residual: bool, fan_in: int, head_dim: int, n_layers: int) -> float:
        """The std of a weight of `role`; `fan_in` is its input width, `head_dim` the attention head width."""
        if role == "attention":
            return self.std / math.sqrt(head_dim)
        if role in ("mlp", "output"):
            gain = math.sqrt(2.0 / (1 + self.kaiming_a**2))  # torch.nn.init.calculate_gain("leaky_relu", a)
            return gain / math.sqrt(fan_in)
        return self.std


# hf:org/name, hf:name or hf:org/name@revision: a Hugging Face hub repository (and revision).
HUB_ID = re.compile(r"^hf:(?P<repo>[\w.-]+(/[\w.-]+)?)(@(?P<revision>[\w./-]+))?$")


class FromWeights(SpecModel):
    """Pretrained weights: every weight is loaded from `path`, none drawn."""

    kind: Literal["from"] = Field(
        description="Load every weight from `path` once the model is built (fine-tuning): a Hugging Face transformers "
                    "checkpoint folder (config.json and *.safetensors, sharded or not: Llama, Mistral, Qwen2, DeepSeek-V3 "
                    "with dense layers, as `tabula import` writes its spec), `hf:org/name` (that model in huggingface_hub's "
                    "local cache; nothing is downloaded at run time), or a tabula run folder or one of its checkpoint "
                    "folders. The weights must fit the model exactly (names and shapes); a mismatch is refused with the "
                    "names that differ (a text checkpoint under model.vision: the image encoder alone is drawn, as new). model.vocab_size must be the pretrained model's (a number).",
    )
    path: str = Field(
        min_length=1,
        description="A checkpoint folder or run folder (relative to the spec file), or hf:org/name[@revision] from the Hugging Face cache.",
    )
    std: float = Field(
        default=0.02,
        gt=0,
        description="The initializer_range an export writes (tabula import copies the checkpoint's); no loaded weight is drawn from it.",
    )

    @field_validator("path")
    @classmethod
    def _hub_id_is_well_formed(cls, path: str) -> str:
        if path.startswith("hf:") and not HUB_ID.match(path):
            raise ValueError(f"a hub id is hf:org/name or hf:org/name@revision, found {path!r}")
        return path

    @property
    def hub_id(self) -> tuple[str, str | None] | None:
        """(repository, revision or None) for an `hf:` path; None for a local folder."""
        match = HUB_ID.match(self.path)
        return (match["repo"], match["revision"]) if match else None

    def weight_std(self, role: Role, *, residual: bool, fan_in: int, head_dim: int, n_layers: int) -> float:
        """What the model is drawn with before the pretrained weights replace every value."""
        return self.std


# Told apart by `kind`, which may be left out for GPT-2's (specs and resolved specs written before
# there were schemes say `init: {std: 0.02, scale_residual: true}`).
Init = Annotated[
    Union[Annotated[GPT2Init, Tag("gpt2")], Annotated[TabulaPrimaInit, Tag("tabulaprima")], Annotated[FromWeights, Tag("from")]],
    kind_with_default("gpt2"),
]
