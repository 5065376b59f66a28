"""Causal self-attention with one, some or all key/value heads per query head (MQA, GQA, MHA).

Computed with torch's scaled_dot_product_attention, so the device's flash or memory-efficient
kernel runs where it exists. A plain causal pass uses `is_causal`; a sliding window, sparse
patterns or document masking pass a mask built once per forward by the model (compiler/blocks/
masks.py): a dense boolean mask (backend sdpa), or FlexAttention's block mask (backend flex).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from tabula.schemas.model import GQA, MHA, MQA
from tabula.schemas.model import Model as ModelSpec

from ..hf_mapping import HFConfig, HFMapping
from .init import WeightInit
from .masks import Mask, dense_mask, flex
from .norm import RMSNorm
from .position import apply_rope
from .registry import ATTENTION


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask | None, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v over (B, nh, T, hs) queries and (B, n_kv, T, hs) keys/values.

    `mask` is None for plain causal attention, a FlexAttention BlockMask (masks.block_mask; no
    dropout), or a boolean (T, T) or (B, 1, T, T) mask where True means "may attend". Fewer
    key/value heads than query heads are shared in groups."""
    if isinstance(mask, BlockMask):
        return flex(q, k, v, mask)
    if mask is None:
        gqa = k.size(1) != q.size(1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
    if k.size(1) != q.size(1):
        # Kernels that take a mask do not all share heads themselves: repeat them.
        repeats = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


# The dense mask of a window (or a whole MaskPattern): masks.dense_mask, by its earlier name.
attention_mask = dense_mask


class AttentionToHF(HFMapping):
    """What every attention kind's mapping shares: QK-norm maps nowhere; attention-only dropout neither."""

    def problems(self, spec: Any, model: ModelSpec, architecture: str, path: str) -> list[str]:
        problems = []
        if spec.qk_norm:
            problems.append(f"{path}.qk_norm: QK-norm does not map to Llama, Mistral, Qwen2 or DeepSeek-V3")
        if spec.sparse is not None:
            problems.append(f"{path}.sparse: global tokens and strided blocks do not map to Llama, Mistral, Qwen2 or DeepSeek-V3")
        return problems

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        if config.get("attention_dropout"):
            return {}, [f"config.json: attention_dropout: {config['attention_dropout']}: tabula's model.dropout drops the residual "
                        f"branches too; only 0 imports"]
        return {}, []


# Which projections each architecture biases: Llama all four or none (attention_bias), Qwen2 the
# query, key and value (never o_proj), Mistral none.
QWEN2_BIASES = {"q": True, "k": True, "v": True, "o": False}


class HeadsToHF(AttentionToHF):
    """Llama's attention (Mistral's with a sliding window; Qwen2's with q, k, v biases): the same
    four projections."""

    renames = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}
    reads = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

    def architecture(self, spec: MHA | GQA | MQA, model: ModelSpec) -> str:
        if spec.projection_biases() == QWEN2_BIASES:
            return "Qwen2ForCausalLM"
        return "MistralForCausalLM" if spec.window is not None else "LlamaForCausalLM"

    def problems(self, spec: MHA | GQA | MQA, model: ModelSpec, architecture: str, path: str) -> list[str]:
        problems = super().problems(spec, model, architecture, path)
        biases = set(spec.projection_biases().values())
        if architecture == "MistralForCausalLM" and True in biases:
            problems.append(f"{path}.bias: Mistral (sliding window) has no biases; set bias: false")
        elif architecture == "MixtralForCausalLM" and True in biases:
            problems.append(f"{path}.bias: Mixtral has no attention biases; set bias: false")
        elif architecture == "LlamaForCausalLM" and len(biases) > 1:
            problems.append(f"{path}.bias: Llama biases all four projections or none (attention_bias); Qwen2 biases q, k and v")
        return problems

    def config(self, spec: MHA | GQA | MQA, model: ModelSpec, architecture: str) -> dict[str, Any]:
        dims = spec.dims(model.d_model)
        config = {"num_attention_heads": dims.n_heads, "num_key_value_heads": dims.n_kv_heads, "head_dim": dims.head_dim}
        if architecture == "Qwen2ForCausalLM":  # every layer slides (max_window_layers 0) or none does
            window = {"use_sliding_window": True, "sliding_window": spec.window, "max_window_layers": 0} if spec.window else {}
            return config | {"model_type": "qwen2", "use_sliding_window": False, "max_window_layers": model.n_layers} | window
        if architecture in ("MistralForCausalLM", "MixtralForCausalLM"):
            return config | {"model_type": "mistral" if architecture == "MistralForCausalLM" else "mixtral", "sliding_window": spec.window}
        return config | {"model_type": "llama", "attention_bias": spec.projection_biases()["q"]}

    def read_config(self, config: HFConfig, architecture: str) -> tuple[dict[str, Any], list[str]]:
        spec, problems = super().read_config(config, architecture)
        n_heads, hidden = config["num_attention_heads"], config["hidden_size"]
        n_kv = config.get("num_key_value_heads") or n_heads
        spec |= {"kind": "mha" if n_kv == n_heads else "mqa" if n_kv == 1 else "gqa", "n_heads": n_heads}
        if spec["kind"] == "gqa":
            spec["n_kv_heads"] = n_kv
        head_dim = config.get("head_dim") or hidden // n_heads
        if hidden % n_heads or head_dim != hidden // n_heads:
            spec["head_dim"] = head_dim
        if architecture == "LlamaForCausalLM":
            spec["bias"] = bool(config.get("attention_bias"))
        elif architecture == "Qwen2ForCausalLM":
            spec["bias"] = {name: value for name, value in QWEN2_BIASES.items() if value}
        window, problems = self._window(config, architecture, problems)
        if window is not None:
            spec["window"] = window
        return spec, problems

    @staticmethod
    def _window(config: HFConfig, architecture: str, problems: list[str]) -> tuple[int | None, list[str]]:
        """The sliding window every layer has (None: none has), or a problem where only some layers slide."""
        if architecture == "MistralForCausalLM":
            return config.get("sliding_window"), problems
        if architecture != "Qwen2ForCausalLM":
            return None, problems
        n_layers: int = config["num_hidden_layers"]
        types = config.get("layer_types")
        if types is None:  # configs written before layer_types: layers from max_window_layers on slide
            sliding = config.get("use_sliding_window") and config.get("sliding_window") is not None
            start = config.get("max_window_layers", n_layers)
            types = ["sliding_attention" if sliding and i >= start else "full_attention" for i in range(n_layers)]
        sliding = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
        unknown = sorted({kind for kind in types if kind not in ("sliding_attention", "full_attention")})
        if unknown:
            return None, [*problems, f"config.json: layer_types: {', '.join(unknown)} layers have no tabula equivalent"]
        if sliding and len(sliding) < n_layers:
            return None, [*problems, f"config.json: use_sliding_window: layers {_ranges(sliding)} of {n_layers} slide (max_window_layers: "
                                     f"{config.get('max_window_layers')}) and the others do not; tabula's window is every layer's or none's"]
        return (config.get("sliding_window") if sliding else None), problems


def _ranges(indices: list[int]) -> str:
    """'3-7' for consecutive layer indices, else the list."""
    if indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 1:
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))


@ATTENTION.register("mha")
@ATTENTION.register("gqa")
@ATTENTION.register("mqa")
class CausalSelfAttention(nn.Module):
    """Parameters `q_proj`, `k_proj`, `v_proj`, `o_proj` (and `q_norm`, `k_norm` with QK-norm);
    one class for mha, gqa and mqa, which differ only in their number of key/value heads.

    forward(x (B, T, C), rope (cos, sin) or None, mask, prefix (keys, values) or None) -> (B, T, C)."""

    hf = HeadsToHF()

    def __init__(self, spec: MHA | GQA | MQA, *, d_model: int, norm_eps: float, dropout: float) -> None:
        super().__init__()
        dims, bias = spec.dims(d_model), spec.projection_biases()
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, dims.head_dim
        self.q_proj = nn.Linear(d_model, self.n_heads * self.head_dim, bias=bias["q"])
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=bias["k"])
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=bias["v"])
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=bias["o"])
        # QK-norm normalises each head's query and key before RoPE (OLMo 2, Qwen 3).
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if spec.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if spec.qk_norm else nn.Identity()
        self.dropout = dropout

    @classmethod
    def build(cls, spec: MHA | GQA | MQA, *, d_model: int, norm_eps: float, dropout: float) -> CausalSelfAttention:
        return cls(spec, d_model=d_model, norm_eps=norm_eps, dropout=dropout)

    def init_weights(self, init: WeightInit) -> None:
        for name in ("q_proj", "k_proj", "v_proj"):
            init.linear_(getattr(self, name), name, "attention", head_dim=self.head_dim)
        init.linear_(self.o_proj, "o_proj", "attention", residual=True, head_dim=self.head_dim)
        for norm in (self.q_norm, self.k_norm):
            if isinstance(norm, RMSNorm):
                norm.init_weights()

    def rotate(self, q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE on (B, T, nh, hs) queries and (B, T, n_kv, hs) keys (model.kernels.rope: liger overrides it)."""
        return apply_rope(q, *rope), apply_rope(k, *rope)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> queries (B, T, nh, hs), keys and values (B, T, n_kv, hs): QK-normed and rotated
        (what the ONNX export's cached forward also builds on)."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim))  # (B, T, nh, hs)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim))  # (B, T, n_kv, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if rope is not None:
            q, k = self.rotate(q, k, rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: Mask | None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, rope)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, n_kv, T, hs)
        if prefix is not None:  # prefix tuning: learned keys and values before the sequence's, (B, n_kv, n, hs)
            k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)
        y = attend(q.transpose(1, 2), k, v, mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh * hs)
        return self.o_proj(y)
