"""Multi-head latent attention (DeepSeek-V2/V3, TabulaPrima): its spec and torch-free facts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..base import SpecModel, field_error
from .attention import AttentionDims, AttentionSpec
from .costs import Shapes, Storage, linear

# What `bias: true` biases: the projections from the hidden state and the output (DeepSeek-V2's
# and V3's attention_bias, and a direct query projection); never the up-projections from latents.
BIASED_BY_TRUE = ("q_down", "q", "kv_down", "k_rope", "o")


class LatentAttentionBias(SpecModel):
    """Which projections of multi-head latent attention add a bias."""

    q_down: bool = Field(default=False, description="The query down-projection to the query latent (with q_latent).")
    q_up: bool = Field(default=False, description="The query up-projection from the query latent (with q_latent).")
    q: bool = Field(default=False, description="The direct query projection (q_proj, without q_latent).")
    kv_down: bool = Field(default=False, description="The key/value down-projection to the kv latent.")
    kv_up: bool = Field(default=False, description="The key/value up-projection from the kv latent.")
    k_rope: bool = Field(default=False, description="The shared rotary key projection.")
    o: bool = Field(default=False, description="The output projection (o_proj), which writes into the residual stream (TabulaPrima biases it alone).")


class MLA(AttentionSpec):
    """Multi-head latent attention (DeepSeek-V2): low-rank q and kv latents, decoupled RoPE."""

    bias: bool | LatentAttentionBias = Field(
        default=False,
        description="Biases: true biases the projections from the hidden state and the output (q_down or q, kv_down, k_rope, o), as DeepSeek-V2/V3's attention_bias; or one per projection, e.g. {o: true}.",
    )
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
        default=False,
        description="RMSNorm on the q and kv latents, as DeepSeek-V2 and V3 have (the TabulaPrima models have none).",
    )

    @model_validator(mode="after")
    def _biased_projections_exist(self) -> MLA:
        if isinstance(self.bias, LatentAttentionBias):
            absent = ("q",) if self.q_latent is not None else ("q_down", "q_up")
            for name in absent:
                if getattr(self.bias, name):
                    has = "has q_latent set" if self.q_latent is not None else "has no q_latent"
                    raise field_error(("bias", name), f"there is no {name} projection to bias: this attention {has}")
        return self

    def projection_biases(self) -> dict[str, bool]:
        if isinstance(self.bias, LatentAttentionBias):
            return self.bias.model_dump()
        query = "q" if self.q_latent is None else "q_down"  # the one query projection from the hidden state
        biased = {name for name in BIASED_BY_TRUE if name not in ("q", "q_down") or name == query}
        return {name: self.bias and name in biased for name in LatentAttentionBias.model_fields}

    def dims(self, d_model: int) -> AttentionDims:
        head = self.head_dim if self.head_dim is not None else d_model // self.n_heads
        v_head = self.v_head_dim if self.v_head_dim is not None else head
        return AttentionDims(self.n_heads, self.n_heads, head, v_head, self.rope_head_dim)

    def parameter_shapes(self, prefix: str, d_model: int) -> Shapes:
        dims, bias = self.dims(d_model), self.projection_biases()
        nh, hd, hv = dims.n_heads, dims.head_dim, dims.v_head_dim
        nope = hd - self.rope_head_dim
        shapes: Shapes = []
        if self.q_latent is None:
            shapes += linear(prefix + "q_proj", d_model, nh * hd, bias["q"])
        else:
            shapes += linear(prefix + "q_down", d_model, self.q_latent, bias["q_down"])
            if self.latent_norm:
                shapes.append((prefix + "q_latent_norm.weight", (self.q_latent,)))
            shapes += linear(prefix + "q_up", self.q_latent, nh * hd, bias["q_up"])
        shapes += linear(prefix + "kv_down", d_model, self.kv_latent, bias["kv_down"])
        if self.latent_norm:
            shapes.append((prefix + "kv_latent_norm.weight", (self.kv_latent,)))
        shapes += linear(prefix + "kv_up", self.kv_latent, nh * (nope + hv), bias["kv_up"])
        shapes += linear(prefix + "k_rope", d_model, self.rope_head_dim, bias["k_rope"])
        shapes += linear(prefix + "o_proj", nh * hv, d_model, bias["o"])
        return shapes + self._qk_norm_shapes(prefix, hd)

    def kernel_bytes_per_token(self, dims: AttentionDims, seq_len: int, storage: Storage) -> int:
        nh, hd, hv = dims.n_heads, dims.head_dim, dims.v_head_dim
        nope = hd - self.rope_head_dim
        latents = (self.q_latent or 0) + self.kv_latent
        latent_norm = 2 * latents * 4 if self.latent_norm else 0
        # latents; kv_up's output (keys' content and values, v a view of it); q and k re-assembled
        # with their rotary parts; the SDPA output and its re-laid copy for o_proj
        elements = latents + nh * (nope + hv) + 2 * nh * hd + 2 * nh * hv
        return elements * storage.matmul + latent_norm

    def check(self, d_model: int, *, rotary: bool) -> None:
        self._check_heads_divide(d_model)
        head = self.dims(d_model).head_dim
        if self.rope_head_dim >= head:
            raise field_error(
                ("block", "attention", "rope_head_dim"),
                f"rope_head_dim ({self.rope_head_dim}) must be smaller than the head width ({head})",
            )
        if self.rope_head_dim % 2:
            raise field_error(("block", "attention", "rope_head_dim"), f"rope_head_dim ({self.rope_head_dim}) must be even")
        if not rotary:
            raise field_error(("position", "kind"), "MLA attention needs rope positions (its decoupled key/query parts are rotary)")
