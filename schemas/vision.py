"""The `model.vision:` section: an image encoder and a projector into the language model's width.

An image-text document (a `kind: image_text` source) becomes, in the token stream, `n_patches`
image tokens (`image_token`) then its caption and the end-of-document token. The model embeds the
tokens, runs the encoder over the batch's images, projects each patch to d_model and puts the
patches in place of the image tokens; the loss is taken on text targets only.

Parameter names (below `vision.`; the plan counts them, compiler/vision.py registers them):

    encoder.pos_embed                         (n_patches, D)           learned positions
    encoder.patch_embed.weight / .bias        (D, 3 * p * p), (D,)     a patch's pixels to D
    encoder.blocks.{i}.norm1|norm2.weight / .bias   (D,)               pre-norm LayerNorms
    encoder.blocks.{i}.qkv.weight / .bias     (3D, D)                  attention (bidirectional)
    encoder.blocks.{i}.proj.weight / .bias    (D, D)
    encoder.blocks.{i}.fc1.weight / .bias     (mlp_ratio D, D)         GELU MLP
    encoder.blocks.{i}.fc2.weight / .bias     (D, mlp_ratio D)
    encoder.norm.weight / .bias               (D,)
    projector.fc1.weight / .bias              (C, D)                   linear: fc1 alone
    projector.fc2.weight / .bias              (C, C)                   mlp: fc1, GELU, fc2
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SpecModel, field_error
from .blocks.costs import FLOPS_PER_PARAMETER, Shapes, count, linear

IMAGE_TOKEN = "<|image|>"


class VitEncoder(SpecModel):
    kind: Literal["vit"] = Field(
        description="A ViT: the image cut into patch_size squares, each linearly embedded with a learned position, then "
                    "n_layers pre-norm transformer blocks (bidirectional attention), trained with the language model.")
    image_size: int = Field(gt=0, le=4096, description="Images are resized to image_size x image_size pixels (RGB) when the data is prepared.")
    patch_size: int = Field(gt=0, le=512, description="Width of a square patch in pixels; image_size must be a multiple of it.")
    d_model: int = Field(gt=0, le=65536, description="Width of the encoder's residual stream.")
    n_layers: int = Field(ge=1, le=256, description="Transformer blocks of the encoder.")
    n_heads: int = Field(ge=1, le=1024, description="Attention heads of each encoder block; d_model must be a multiple of it.")
    mlp_ratio: int = Field(default=4, ge=1, le=16, description="Width of each block's MLP as a multiple of d_model.")

    @model_validator(mode="after")
    def _divisible(self) -> VitEncoder:
        if self.image_size % self.patch_size:
            raise field_error("patch_size", f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.d_model % self.n_heads:
            raise field_error("n_heads", f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        return self

    @property
    def n_patches(self) -> int:
        """Patches of one image: the image tokens one image takes in the token stream."""
        return (self.image_size // self.patch_size) ** 2

    def parameter_shapes(self, prefix: str) -> Shapes:
        d, hidden = self.d_model, self.mlp_ratio * self.d_model
        # a module's own parameters come before its children's (nn.Module's order)
        shapes = [(prefix + "pos_embed", (self.n_patches, d))] + linear(prefix + "patch_embed", 3 * self.patch_size**2, d, True)
        for i in range(self.n_layers):
            block = f"{prefix}blocks.{i}."
            shapes += [(block + "norm1.weight", (d,)), (block + "norm1.bias", (d,))]
            shapes += linear(block + "qkv", d, 3 * d, True) + linear(block + "proj", d, d, True)
            shapes += [(block + "norm2.weight", (d,)), (block + "norm2.bias", (d,))]
            shapes += linear(block + "fc1", d, hidden, True) + linear(block + "fc2", hidden, d, True)
        return shapes + [(prefix + "norm.weight", (d,)), (prefix + "norm.bias", (d,))]

    def flops_per_image(self) -> int:
        """Training FLOPs (forward + backward) of one image: 6 per weight per patch, and attention's
        scores and weighted values (2 matmuls of n_patches x n_patches x d, 3x forward for training)."""
        weights = count(self.parameter_shapes("")) - self.n_patches * self.d_model  # the positions are added, not multiplied
        attention = 3 * 2 * 2 * self.n_patches**2 * self.d_model * self.n_layers
        return FLOPS_PER_PARAMETER * weights * self.n_patches + attention


class Projector(SpecModel):
    kind: Literal["linear", "mlp"] = Field(
        default="mlp", description="linear: one linear map from the encoder's width to d_model; mlp: linear, GELU, linear (LLaVA-1.5's).")

    def parameter_shapes(self, prefix: str, d_in: int, d_model: int) -> Shapes:
        shapes = linear(prefix + "fc1", d_in, d_model, True)
        return shapes + (linear(prefix + "fc2", d_model, d_model, True) if self.kind == "mlp" else [])


class Vision(SpecModel):
    encoder: VitEncoder = Field(description="The image encoder.")
    projector: Projector = Field(default_factory=Projector, description="How the encoder's patches become d_model-wide embeddings.")
    image_token: str = Field(
        default=IMAGE_TOKEN, min_length=1,
        description="The token that holds an image patch's place in the token stream (added to the tokenizer as a special token).")

    @property
    def n_patches(self) -> int:
        """Image tokens one image takes in the token stream."""
        return self.encoder.n_patches

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        """(name, shape) of the encoder's and projector's parameters, below `prefix` ("vision.")."""
        return (self.encoder.parameter_shapes(prefix + "encoder.")
                + self.projector.parameter_shapes(prefix + "projector.", self.encoder.d_model, d_model))

    def flops_per_image(self, d_model: int) -> int:
        """Training FLOPs of one image through the encoder and the projector."""
        projector = count(self.projector.parameter_shapes("", self.encoder.d_model, d_model))
        return self.encoder.flops_per_image() + FLOPS_PER_PARAMETER * projector * self.n_patches

    def summary(self) -> str:
        e = self.encoder
        return (f"vit {e.image_size}px patch {e.patch_size} ({e.n_patches} image tokens), d_model {e.d_model}, "
                f"{e.n_layers} layer{'s' if e.n_layers != 1 else ''}, {self.projector.kind} projector")
