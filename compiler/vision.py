"""The image side of an image-text model (model.vision): a ViT encoder and a projector into d_model.

`VisionTower(images)` takes a batch's images as uint8 (N, S, S, 3) and returns the projected patches
(N, n_patches, C). `ImageInput` is what the model's forward takes: those images and, for every
position of the (B, T) token batch, which patch of which image it holds (-1: a text token). The
model scatters the patches over the image tokens' embeddings (`place_images`); a window that cuts
an image holds only some of its patches, and only those are placed.

Parameter names and shapes are schemas/vision.py's (the plan counts them from there).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.registry import Registry
from tabula.schemas.vision import Projector as ProjectorSpec
from tabula.schemas.vision import Vision, VitEncoder

from .blocks.init import WeightInit


class ImageInput(NamedTuple):
    """A token batch's images: `pixels` uint8 (N, S, S, 3), the distinct images its rows hold; `patch_index`
    int64 (B, T), image * n_patches + patch at an image token's position, -1 at a text token's."""

    pixels: torch.Tensor
    patch_index: torch.Tensor
    n_patches: int

    def to(self, device: torch.device) -> ImageInput:
        """The tensors on `device` (copied without waiting)."""
        return ImageInput(self.pixels.to(device, non_blocking=True), self.patch_index.to(device, non_blocking=True), self.n_patches)


class _EncoderBlock(nn.Module):
    """A pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)); attention sees every patch."""

    def __init__(self, d: int, n_heads: int, hidden: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, P, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(N, P, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (N, h, P, hs)
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, h, P, hs), bidirectional
        x = x + self.proj(attended.transpose(1, 2).reshape(N, P, D))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return out


class ViT(nn.Module):
    """Patches (p x p pixels, linearly embedded) with learned positions through n_layers blocks."""

    def __init__(self, spec: VitEncoder) -> None:
        super().__init__()
        self.patch_size, d = spec.patch_size, spec.d_model
        self.patch_embed = nn.Linear(3 * spec.patch_size**2, d)
        self.pos_embed = nn.Parameter(torch.empty(spec.n_patches, d))
        self.blocks = nn.ModuleList(_EncoderBlock(d, spec.n_heads, spec.mlp_ratio * d) for _ in range(spec.n_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        N, S, _, _ = images.shape  # uint8 (N, S, S, 3)
        p = self.patch_size
        pixels = images.to(self.patch_embed.weight.dtype) / 127.5 - 1.0  # [-1, 1]
        # (N, S/p, p, S/p, p, 3) -> (N, S/p, S/p, p, p, 3): patches in row-major order
        patches = pixels.view(N, S // p, p, S // p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(N, (S // p) ** 2, 3 * p * p)
        x = self.patch_embed(patches) + self.pos_embed  # (N, P, D)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.norm(x)  # (N, P, D)
        return out

    def init_weights(self, init: WeightInit) -> None:
        init.linear_(self.patch_embed, "patch_embed", "embedding")
        init.normal_(self.pos_embed, "pos_embed", 0.02)
        for i, block in enumerate(cast("list[_EncoderBlock]", list(self.blocks))):
            for name in ("qkv", "proj", "fc1", "fc2"):
                init.at(f"blocks.{i}").linear_(getattr(block, name), name, "attention" if name in ("qkv", "proj") else "mlp", residual=name in ("proj", "fc2"))
            block.norm1.reset_parameters()
            block.norm2.reset_parameters()
        self.norm.reset_parameters()


ENCODERS: Registry[Callable[[VitEncoder], nn.Module]] = Registry("vision encoder")
ENCODERS.add("vit", ViT)


class Projector(nn.Module):
    """linear: fc1; mlp: fc2(gelu(fc1(x))) (LLaVA-1.5's)."""

    def __init__(self, spec: ProjectorSpec, d_in: int, d_model: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_model)
        self.fc2 = nn.Linear(d_model, d_model) if spec.kind == "mlp" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)  # (N, P, C)
        out: torch.Tensor = self.fc2(F.gelu(x)) if self.fc2 is not None else x
        return out


class VisionTower(nn.Module):
    """The encoder, then the projector: uint8 images (N, S, S, 3) -> patch embeddings (N, n_patches, C)."""

    def __init__(self, spec: Vision, d_model: int) -> None:
        super().__init__()
        self.n_patches = spec.n_patches
        self.encoder = ENCODERS[spec.encoder.kind](spec.encoder)
        self.projector = Projector(spec.projector, spec.encoder.d_model, d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.projector(self.encoder(images))
        return out

    def init_weights(self, init: WeightInit) -> None:
        init_encoder = getattr(self.encoder, "init_weights", None)
        if init_encoder is not None:
            init_encoder(init.at("encoder"))
        init.at("projector").linear_(self.projector.fc1, "fc1", "mlp")
        if self.projector.fc2 is not None:
            init.at("projector").linear_(self.projector.fc2, "fc2", "mlp")

    def place(self, x: torch.Tensor, images: ImageInput) -> torch.Tensor:
        """Token embeddings x (B, T, C) with the images' projected patches at the image tokens' positions."""
        patches = self(images.pixels).reshape(-1, x.size(-1))  # (N * P, C)
        at = images.patch_index >= 0  # (B, T)
        placed = patches[images.patch_index.clamp(min=0)].to(x.dtype)  # (B, T, C)
        return torch.where(at.unsqueeze(-1), placed, x)
