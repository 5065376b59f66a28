"""Positions: rotary embeddings (RoPE, with optional linear or NTK scaling), learned, none.

Every kind is a module with the same call: forward(x (B, T, C), offset=0) -> (x, rope) for the
positions offset..offset+T-1 (offset: prefix tuning's virtual positions come first), where rope is the
(cos, sin) tables attention rotates queries and keys by, or None. Learned positions are added to
x; RoPE leaves x alone and hands attention its tables; none (NoPE) does neither: causal masking
alone orders the tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tabula.schemas.model import LearnedPositions as LearnedSpec
from tabula.schemas.model import Model as ModelSpec
from tabula.schemas.model import NoPositions as NoSpec
from tabula.schemas.model import Rope as RopeSpec

from ..hf_mapping import HFConfig, HFMapping, NoHF
from .init import WeightInit
from .registry import POSITION

Tables = tuple[torch.Tensor, torch.Tensor]


class RopeToHF(HFMapping):
    """RoPE as Llama, Mistral, Qwen2 and DeepSeek-V3 rotate (halves; DeepSeek's interleaved pairs are
    permuted into halves by its attention's tensors); linear scaling maps."""

    reads = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "DeepseekV3ForCausalLM")

    def problems(self, spec: RopeSpec, model: ModelSpec, architecture: str, path: str) -> list[str]:
        if spec.scaling is not None and spec.scaling.kind != "linear":
            return [f"{path}.scaling.kind: {spec.scaling.kind} scaling does not map (linear does)"]
        return []

    def config(self, spec: RopeSpec, model: ModelSpec, architecture: str) -> dict[str, Any]:
        if spec.scaling is None:
            return {"rope_parameters": {"rope_type": "default", "rope_theta": spec.theta}}
        return {"rope_parameters": {"rope_type": "linear", "rope_theta": spec.theta, "factor": spec.scaling.factor}}

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        rope, where = rope_parameters(config)
        if rope is None:
            return {"kind": "rope"}, ["config.json: rope_parameters: one RoPE per layer type has no tabula equivalent"]
        kind = rope.get("rope_type", "default")
        spec: dict[str, Any] = {"kind": "rope", "theta": float(rope["rope_theta"])}
        problems = []
        if kind == "linear" and rope["factor"] > 1:
            spec["scaling"] = {"kind": "linear", "factor": float(rope["factor"])}
        elif kind == "linear" and rope["factor"] < 1:
            problems.append(f"config.json: {where}.factor: {rope['factor']}: tabula's linear scaling stretches (factor > 1)")
        elif kind not in ("default", "linear"):
            problems.append(f"config.json: {where}.rope_type: {kind} scaling has no tabula equivalent (default and linear do)")
        partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor"))
        if partial not in (None, 1, 1.0):
            problems.append(f"config.json: partial_rotary_factor: {partial}: tabula rotates the whole head (MLA: its rope_head_dim)")
        return spec, problems


def rope_parameters(config: HFConfig) -> tuple[dict[str, Any] | None, str]:
    """The RoPE settings of a config (transformers 5's rope_parameters, or the rope_theta and
    rope_scaling of configs written before it) and the key they came from; None for settings per
    layer type (rope_parameters holding one mapping per kind of layer)."""
    if isinstance(config.get("rope_parameters"), dict):
        rope = config["rope_parameters"]
        return (rope if "rope_theta" in rope else None), "rope_parameters"
    scaling = dict(config.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    return {**scaling, "rope_type": kind, "rope_theta": config.get("rope_theta", 10000.0)}, "rope_scaling"


@POSITION.register("rope")
class Rope(nn.Module):
    """Holds the cos/sin tables for positions 0..max_seq_len-1 of a `dim`-wide rotary part.

    The tables are non-persistent buffers (not in the state dict): `reset_buffers()` recomputes
    them after the model is materialised from the meta device."""

    hf = RopeToHF()
    cos: torch.Tensor  # buffers, (max_seq_len, dim)
    sin: torch.Tensor

    def __init__(self, spec: RopeSpec, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.theta = spec.theta
        self.linear_factor = 1.0
        if spec.scaling is not None and spec.scaling.kind == "linear":
            self.linear_factor = spec.scaling.factor  # positions interpolated: p / factor
        if spec.scaling is not None and spec.scaling.kind == "ntk" and dim > 2:
            # NTK-aware: a larger base stretches the low frequencies and keeps the high ones.
            # (A 2-wide rotary part has one frequency, the highest, which no base changes.)
            self.theta = spec.theta * spec.scaling.factor ** (dim / (dim - 2))
        self.register_buffer("cos", torch.empty(max_seq_len, dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, dim), persistent=False)
        self.reset_buffers()

    @classmethod
    def build(cls, spec: RopeSpec, *, d_model: int, rotary_dim: int, max_seq_len: int) -> Rope:
        return cls(spec, rotary_dim, max_seq_len)

    def init_weights(self, init: WeightInit | None = None) -> None:
        """No parameters: the cos/sin tables, which to_empty left uninitialised."""
        self.reset_buffers()

    def reset_buffers(self) -> None:
        device = self.cos.device
        if device.type == "meta":
            return
        # fp32 and the same operation order as Llama's rotary embedding, for parity.
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim))
        inv_freq = inv_freq / self.linear_factor
        positions = torch.arange(self.max_seq_len, device=device).float()
        freqs = torch.outer(positions, inv_freq)  # (max_seq_len, dim/2)
        table = torch.cat((freqs, freqs), dim=-1)  # (max_seq_len, dim): rotate-half layout
        self.cos.copy_(table.cos())
        self.sin.copy_(table.sin())

    def tables(self, seq_len: int, offset: int = 0) -> Tables:
        """(cos, sin) of positions offset..offset+seq_len-1, each (T, dim)."""
        return self.cos[offset : offset + seq_len], self.sin[offset : offset + seq_len]

    def forward(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, Tables]:
        return x, self.tables(x.size(1), offset)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (B, T, nh, hs) by position; cos and sin are (T, hs)."""
    cos = cos[:, None, :].to(x.dtype)  # (T, 1, hs): broadcast over heads
    sin = sin[:, None, :].to(x.dtype)
    return x * cos + rotate_half(x) * sin


@POSITION.register("learned")
class LearnedPositions(nn.Module):
    """A learned embedding per position, added to the token embedding (GPT-2); parameter `weight`."""

    hf = NoHF("learned positions have no Hugging Face equivalent here (rope maps)")

    def __init__(self, max_seq_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_seq_len, d_model))

    @classmethod
    def build(cls, spec: LearnedSpec, *, d_model: int, rotary_dim: int, max_seq_len: int) -> LearnedPositions:
        return cls(max_seq_len, d_model)

    def init_weights(self, init: WeightInit) -> None:
        init.weight_(self.weight, "weight", "embedding")

    def forward(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, None]:
        return x + self.weight[offset : offset + x.size(1)], None  # (B, T, C) + (T, C)


@POSITION.register("none")
class NoPositions(nn.Module):
    """NoPE: nothing added, nothing rotated."""

    hf = NoHF("none positions have no Hugging Face equivalent here (rope maps)")

    @classmethod
    def build(cls, spec: NoSpec, *, d_model: int, rotary_dim: int, max_seq_len: int) -> NoPositions:
        return cls()

    def init_weights(self, init: WeightInit | None = None) -> None:
        """Nothing to initialise."""

    def forward(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, None]:
        return x, None
