"""Multi-head latent attention (DeepSeek-V2; TabulaPrima): low-rank query and key/value latents
and a decoupled rotary part.

Per head, a query/key has a content part of head_dim - rope_head_dim ("nope", no positions)
expanded from the latents, and a rotary part of rope_head_dim: the query's comes from the query
latent, the key's is one head projected straight from the hidden state and shared by every
head. Values are expanded from the key/value latent. A KV cache would store only the kv latent
and the rotary key, which is the point of MLA; training computes full keys and values.

Parameters: `q_down`, `q_up` (or `q_proj` without a query latent), `kv_down`, `k_rope`,
`kv_up`, `o_proj`; `q_latent_norm`, `kv_latent_norm` with latent_norm (DeepSeek-V3), and
`q_norm`, `k_norm` with QK-norm. `q_up` rows are per head [nope | rope]; `kv_up` rows are per
head [key nope | value], DeepSeek-V3's own layout, so the Hugging Face export copies them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tabula.schemas.model import MLA
from tabula.schemas.model import Model as ModelSpec

from ..hf_mapping import ExportError, HFConfig
from .attention import AttentionToHF, attend
from .masks import Mask
from .init import WeightInit
from .norm import RMSNorm
from .position import apply_rope
from .registry import ATTENTION

LATENT_NORM_EPS = 1e-6  # DeepSeek-V3's latent norms use a fixed eps


class LatentToHF(AttentionToHF):
    """DeepSeek-V3's attention (MoE off). It projects the kv latent and the shared rotary key with
    one matrix, kv_a_proj_with_mqa, rows [latent | rope]; one attention_bias biases q_a_proj,
    kv_a_proj_with_mqa and o_proj, never q_b_proj, kv_b_proj or a direct q_proj."""

    renames = {"q_proj": "q_proj", "q_down": "q_a_proj", "q_latent_norm": "q_a_layernorm", "q_up": "q_b_proj",
               "kv_latent_norm": "kv_a_layernorm", "kv_up": "kv_b_proj", "o_proj": "o_proj"}
    stacked = {"kv_a_proj_with_mqa": ("kv_down", "k_rope")}

    reads = ("DeepseekV3ForCausalLM",)

    def architecture(self, spec: MLA, model: ModelSpec) -> str:
        return "DeepseekV3ForCausalLM"

    def problems(self, spec: MLA, model: ModelSpec, architecture: str, path: str) -> list[str]:
        problems = super().problems(spec, model, architecture, path)
        if not spec.latent_norm:
            problems.append(f"{path}.latent_norm: MLA maps to DeepSeek-V3 only with latent_norm: true")
        if spec.window is not None:
            problems.append(f"{path}.window: DeepSeek-V3 has no sliding window")
        bias = spec.projection_biases()
        for name in ("q", "q_up", "kv_up"):
            if bias[name]:
                problems.append(f"{path}.bias: DeepSeek-V3's {name} projection has no bias")
        shared = {bias[name] for name in ("kv_down", "k_rope", "o")} | ({bias["q_down"]} if spec.q_latent is not None else set())
        if len(shared) > 1:
            problems.append(f"{path}.bias: DeepSeek-V3 biases q_down, kv_down, k_rope and o all or none (attention_bias)")
        return problems

    def config(self, spec: MLA, model: ModelSpec, architecture: str) -> dict[str, Any]:
        dims = spec.dims(model.d_model)
        return {
            "model_type": "deepseek_v3",
            "num_attention_heads": dims.n_heads,
            "num_key_value_heads": dims.n_kv_heads,
            "q_lora_rank": spec.q_latent,
            "kv_lora_rank": spec.kv_latent,
            "qk_rope_head_dim": spec.rope_head_dim,
            "qk_nope_head_dim": dims.head_dim - spec.rope_head_dim,
            "v_head_dim": dims.v_head_dim,
            "attention_bias": spec.projection_biases()["o"],
            "rope_interleave": False,  # tabula rotates halves, as Llama does
            "num_nextn_predict_layers": 0,
        }

    def tensors(self, spec: MLA, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        [(joined, (latent, rope))] = self.stacked.items()
        rest = {name: tensor for name, tensor in state.items() if not name.startswith((f"{latent}.", f"{rope}."))}
        out = super().tensors(spec, rest)
        for kind in ("weight", "bias"):
            if f"{latent}.{kind}" in state:
                if f"{rope}.{kind}" not in state:
                    raise ExportError([f"{latent}.{kind} has no {rope}.{kind} to share {joined}.{kind} with"])
                out[f"{joined}.{kind}"] = torch.cat([state[f"{latent}.{kind}"], state[f"{rope}.{kind}"]], dim=0)
        return out


    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        spec, problems = super().read_config(config, architecture)
        q_latent, rope = config.get("q_lora_rank"), config["qk_rope_head_dim"]
        spec |= {"kind": "mla", "n_heads": config["num_attention_heads"], "q_latent": q_latent, "kv_latent": config["kv_lora_rank"],
                 "rope_head_dim": rope, "head_dim": config["qk_nope_head_dim"] + rope, "v_head_dim": config["v_head_dim"],
                 "latent_norm": True}
        if config.get("attention_bias"):  # a direct q_proj has no bias there, where tabula's `true` would bias it
            spec["bias"] = True if q_latent is not None else {"kv_down": True, "k_rope": True, "o": True}
        return spec, problems

    def tensors_from_hf(self, spec: MLA, tensors: dict[str, torch.Tensor], config: HFConfig) -> dict[str, torch.Tensor]:
        joint = {name: tensors[name] for name in tensors if name.startswith("kv_a_proj_with_mqa.")}
        out = super().tensors_from_hf(spec, {name: t for name, t in tensors.items() if name not in joint}, config)
        for name, tensor in joint.items():  # rows [latent | rope]
            kind = name.removeprefix("kv_a_proj_with_mqa.")
            out[f"kv_down.{kind}"], out[f"k_rope.{kind}"] = tensor[: spec.kv_latent], tensor[spec.kv_latent :]
        # DeepSeek's own code, and transformers by default, rotate interleaved pairs (x0, x1), (x2, x3)...
        # where tabula rotates halves: the same rotation of the rotary rows taken evens first, then odds.
        # The permutation is applied to queries and keys alike, so their dot products are unchanged.
        if config.get("rope_interleave", True):
            rope = spec.rope_head_dim
            order = torch.cat([torch.arange(0, rope, 2), torch.arange(1, rope, 2)])
            for name in [n for n in out if n.startswith("k_rope.")]:
                out[name] = out[name].index_select(0, order.to(out[name].device))
            for name in [n for n in out if n.startswith(("q_up.", "q_proj."))]:
                tensor = out[name]
                heads = tensor.reshape(spec.n_heads, -1, *tensor.shape[1:])  # (nh, qk, ...): rows per head [nope | rope]
                nope = heads.size(1) - rope
                rotary = heads[:, nope:].index_select(1, order.to(tensor.device))
                out[name] = torch.cat([heads[:, :nope], rotary], dim=1).reshape(tensor.shape)
        return out


@ATTENTION.register("mla")
class LatentAttention(nn.Module):
    """forward(x (B, T, C), rope (cos, sin) of width rope_head_dim, mask, prefix (None)) -> (B, T, C)."""

    hf = LatentToHF()

    def __init__(self, spec: MLA, *, d_model: int, norm_eps: float, dropout: float) -> None:
        super().__init__()
        dims, bias = spec.dims(d_model), spec.projection_biases()
        self.n_heads, self.q_latent, self.head_dim = dims.n_heads, spec.q_latent, dims.head_dim
        self.nope_dim, self.rope_dim, self.v_head_dim = dims.head_dim - spec.rope_head_dim, spec.rope_head_dim, dims.v_head_dim
        H, qk_dim = dims.n_heads, dims.head_dim  # qk: nope + rope
        if spec.q_latent is None:
            self.q_proj = nn.Linear(d_model, H * qk_dim, bias=bias["q"])
        else:
            self.q_down = nn.Linear(d_model, spec.q_latent, bias=bias["q_down"])
            self.q_latent_norm = RMSNorm(spec.q_latent, LATENT_NORM_EPS) if spec.latent_norm else nn.Identity()
            self.q_up = nn.Linear(spec.q_latent, H * qk_dim, bias=bias["q_up"])
        self.kv_down = nn.Linear(d_model, spec.kv_latent, bias=bias["kv_down"])
        self.kv_latent_norm = RMSNorm(spec.kv_latent, LATENT_NORM_EPS) if spec.latent_norm else nn.Identity()
        self.kv_up = nn.Linear(spec.kv_latent, H * (self.nope_dim + self.v_head_dim), bias=bias["kv_up"])
        self.k_rope = nn.Linear(d_model, spec.rope_head_dim, bias=bias["k_rope"])
        self.o_proj = nn.Linear(H * self.v_head_dim, d_model, bias=bias["o"])
        self.q_norm = RMSNorm(qk_dim, norm_eps) if spec.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(qk_dim, norm_eps) if spec.qk_norm else nn.Identity()
        self.dropout = dropout

    @classmethod
    def build(cls, spec: MLA, *, d_model: int, norm_eps: float, dropout: float) -> LatentAttention:
        return cls(spec, d_model=d_model, norm_eps=norm_eps, dropout=dropout)

    def init_weights(self, init: WeightInit) -> None:
        projections = ["q_proj"] if self.q_latent is None else ["q_down", "q_up"]
        for name in [*projections, "kv_down", "kv_up", "k_rope"]:
            init.linear_(getattr(self, name), name, "attention", head_dim=self.head_dim)
        init.linear_(self.o_proj, "o_proj", "attention", residual=True, head_dim=self.head_dim)
        for norm in (getattr(self, "q_latent_norm", None), self.kv_latent_norm, self.q_norm, self.k_norm):
            if isinstance(norm, RMSNorm):
                norm.init_weights()

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_latent is None:
            return self.q_proj(x)
        return self.q_up(self.q_latent_norm(self.q_down(x)))  # through the (B, T, q_latent) latent

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> per-head queries and keys (B, T, nh, nope + rope_dim), rotated on their rope part,
        and values (B, T, nh, hv) (what the ONNX export's cached forward also builds on)."""
        B, T, _ = x.shape
        H, nope, rope_dim = self.n_heads, self.nope_dim, self.rope_dim
        q = self.q_norm(self.queries(x).view(B, T, H, nope + rope_dim))  # (B, T, nh, qk)
        kv = self.kv_up(self.kv_latent_norm(self.kv_down(x))).view(B, T, H, nope + self.v_head_dim)
        k_nope, v = kv.split([nope, self.v_head_dim], dim=-1)  # (B, T, nh, nope), (B, T, nh, hv)
        k_shared = self.k_rope(x).view(B, T, 1, rope_dim).expand(B, T, H, rope_dim)  # one rotary key for all heads
        k = self.k_norm(torch.cat([k_nope, k_shared], dim=-1))  # (B, T, nh, qk)
        q_nope, q_rot = q.split([nope, rope_dim], dim=-1)
        k_nope, k_rot = k.split([nope, rope_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rot, *rope)], dim=-1)
        k = torch.cat([k_nope, apply_rope(k_rot, *rope)], dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: Mask | None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if prefix is not None:
            raise ValueError("prefix tuning needs keys and values of one width; MLA's differ (the spec check refuses it)")
        B, T, _ = x.shape
        q, k, v = self.project(x, rope)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim)  # (B, T, nh * hv)
        return self.o_proj(y)
