"""Hypothesis strategies for small valid model specs over every kind and option: attention
(mha, gqa, mqa, mla and their widths), biases (all, none, per projection), QK-norm, windows,
MLPs (and their dropout), norms, positions, tying, dropout and init schemes."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tabula.schemas.model import AttentionBias, LatentAttentionBias


@st.composite
def bias(draw: st.DrawFn, names: list[str]) -> bool | dict[str, bool]:
    """A `bias` value: a bool, or a mapping naming some of `names`."""
    if draw(st.booleans()):
        return draw(st.booleans())
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    return {name: draw(st.booleans()) for name in chosen}


@st.composite
def attention(draw: st.DrawFn, d_model: int, rotary: bool) -> dict[str, Any]:
    """An attention spec for a d_model-wide model (MLA only with rotary positions)."""
    kinds = ["mha", "gqa", "mqa"] + (["mla"] if rotary else [])
    kind = draw(st.sampled_from(kinds))
    n_heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if d_model % h == 0]))
    spec: dict[str, Any] = {"kind": kind, "n_heads": n_heads}
    head = d_model // n_heads
    if draw(st.booleans()):
        head = draw(st.sampled_from([8, 12, 16]))
        spec["head_dim"] = head
    if rotary and head % 2:
        spec["head_dim"] = head = head + 1
    if kind == "gqa":
        spec["n_kv_heads"] = draw(st.sampled_from([k for k in (1, 2, 4, 8) if n_heads % k == 0]))
    if kind == "mla":
        if head < 4:
            spec["head_dim"] = head = 8
        spec["rope_head_dim"] = draw(st.sampled_from([r for r in (2, 4) if r < head]))
        spec["kv_latent"] = draw(st.sampled_from([8, 16, 24]))
        q_latent = draw(st.sampled_from([None, 8, 24]))
        spec["q_latent"] = q_latent
        if draw(st.booleans()):
            spec["v_head_dim"] = draw(st.sampled_from([6, 8, 12]))
        spec["latent_norm"] = draw(st.booleans())
        names = [n for n in LatentAttentionBias.model_fields if n not in (("q",) if q_latent else ("q_down", "q_up"))]
        spec["bias"] = draw(bias(names))
    else:
        spec["bias"] = draw(bias(list(AttentionBias.model_fields)))
    spec["qk_norm"] = draw(st.booleans())
    spec["window"] = draw(st.sampled_from([None, 4, 16, 64]))
    return spec


@st.composite
def mlp_data(draw: st.DrawFn) -> dict[str, Any]:
    """An MLP: gelu, swiglu or a mixture of experts."""
    kind = draw(st.sampled_from(["gelu", "swiglu", "moe"]))
    hidden, dropout = draw(st.sampled_from([16, 40, 96])), draw(st.sampled_from([0.0, 0.0, 0.1]))
    if kind != "moe":
        return {"kind": kind, "hidden": hidden, "bias": draw(st.booleans()), "dropout": dropout}
    n_experts = draw(st.sampled_from([2, 4]))
    return {"kind": "moe", "n_experts": n_experts, "top_k": draw(st.integers(1, n_experts)), "hidden": hidden, "dropout": dropout,
            "n_shared": draw(st.integers(0, 1)), "router": draw(st.sampled_from(["softmax", "sigmoid"])),
            "balance": draw(st.sampled_from(["aux_loss", "bias"])), "z_loss_weight": draw(st.sampled_from([0.0, 0.001]))}


@st.composite
def model_data(draw: st.DrawFn) -> dict[str, Any]:
    """The `model:` section of a small valid spec (d_model <= 64, n_layers <= 3)."""
    d_model = draw(st.sampled_from([16, 24, 32, 48, 64]))
    position = draw(st.sampled_from([{"kind": "rope"}, {"kind": "rope", "scaling": {"kind": "ntk", "factor": 2.0}},
                                     {"kind": "learned"}, {"kind": "none"}]))
    norm = draw(st.sampled_from([{"kind": "rmsnorm"}, {"kind": "layernorm"}, {"kind": "layernorm", "bias": False}]))
    mlp = draw(mlp_data())
    init = draw(st.sampled_from([{}, {"std": 0.05, "scale_residual": False}, {"kind": "tabulaprima"}]))
    n_layers = draw(st.integers(1, 3))
    rope = position["kind"] == "rope"
    block = {"norm": norm, "attention": draw(attention(d_model, rope)), "mlp": mlp}
    layers = []
    if n_layers > 1 and draw(st.booleans()):  # a layer pattern: another MLP (and window) on some layers
        attn = {**block["attention"], "window": draw(st.sampled_from([None, 4]))}
        layers = [{"start": draw(st.integers(0, n_layers - 1)), "step": draw(st.integers(1, 2)),
                   "block": {"norm": norm, "attention": attn, "mlp": draw(mlp_data())}}]
    return {
        "vocab_size": draw(st.sampled_from([61, 97, 128])),
        "d_model": d_model,
        "n_layers": n_layers,
        "max_seq_len": 64,
        "position": position,
        "block": block,
        "layers": layers,
        "tie_embeddings": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.1])),
        "init": init,
    }
