"""An example spec of every kind, for the registry walk (test_kinds.py). A new kind adds its
examples here; the walk fails for a kind without one."""

from __future__ import annotations

from typing import Any

ATTENTION: dict[str, list[dict[str, Any]]] = {
    "mha": [{"kind": "mha", "n_heads": 4}, {"kind": "mha", "n_heads": 4, "bias": {"o": True}, "qk_norm": True}],
    "gqa": [{"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "bias": True}, {"kind": "gqa", "n_heads": 4, "n_kv_heads": 1, "head_dim": 12}],
    "mqa": [{"kind": "mqa", "n_heads": 4, "window": 4}],
    "mla": [
        {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 16, "rope_head_dim": 4, "latent_norm": True, "bias": True},
        {"kind": "mla", "n_heads": 4, "kv_latent": 16, "rope_head_dim": 4, "v_head_dim": 12, "qk_norm": True, "bias": {"o": True, "kv_up": True}},
    ],
}
MLP: dict[str, list[dict[str, Any]]] = {
    "gelu": [{"kind": "gelu", "hidden": 48}, {"kind": "gelu", "hidden": 48, "bias": False, "dropout": 0.1}],
    "swiglu": [{"kind": "swiglu", "hidden": 40}, {"kind": "swiglu", "hidden": 40, "bias": True}],
    "moe": [{"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 16},
            {"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 16, "n_shared": 1, "router": "sigmoid", "balance": "bias",
             "scale": 2.5, "z_loss_weight": 0.001, "capacity_factor": 1.25, "dropout": 0.1}],
}
NORM: dict[str, list[dict[str, Any]]] = {
    "rmsnorm": [{"kind": "rmsnorm"}],
    "layernorm": [{"kind": "layernorm"}, {"kind": "layernorm", "bias": False}],
}
POSITION: dict[str, list[dict[str, Any]]] = {
    "rope": [{"kind": "rope"}, {"kind": "rope", "scaling": {"kind": "linear", "factor": 2.0}}],
    "learned": [{"kind": "learned"}],
    "none": [{"kind": "none"}],
}
BLOCK: dict[str, list[dict[str, Any]]] = {
    "transformer": [{"attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 8}, "mlp": {"kind": "swiglu", "hidden": 40}},
                    {"kind": "transformer", "norm": {"kind": "layernorm"}, "attention": {"kind": "mha", "n_heads": 4},
                     "mlp": {"kind": "gelu", "hidden": 48, "dropout": 0.1}}],
}
