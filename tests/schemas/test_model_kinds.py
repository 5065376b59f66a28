"""The model's kinds as the spec states them, torch-free: per-projection biases (a bool keeps
its meaning), initialisation schemes (GPT-2's when no kind is given), the MLP's dropout, and the
derived widths each attention kind computes once."""

from __future__ import annotations

import math

import pytest

from schema_texts import MINIMAL
from tabula.schemas.canonical import canonical_yaml
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text
from tabula.schemas.model import GQA, MHA, MLA, MQA, GPT2Init, TabulaPrimaInit

ATTENTION = "attention: {kind: gqa, n_heads: 4, n_kv_heads: 2}"


def with_model(old: str, new: str):
    assert old in MINIMAL
    return load_spec_text(MINIMAL.replace(old, new))


def error_of(old: str, new: str):
    with pytest.raises(SpecErrors) as raised:
        with_model(old, new)
    (error,) = raised.value.errors
    return error


def test_a_bool_bias_means_every_projection_as_before():
    assert MHA(kind="mha", n_heads=2, bias=True).projection_biases() == {"q": True, "k": True, "v": True, "o": True}
    assert GQA(kind="gqa", n_heads=2, n_kv_heads=1).projection_biases() == dict.fromkeys("qkvo", False)
    # MLA's true: what it biased before, the projections from the hidden state and the output
    latent = MLA(kind="mla", n_heads=2, q_latent=8, kv_latent=8, rope_head_dim=2, bias=True).projection_biases()
    assert {name for name, on in latent.items() if on} == {"q_down", "kv_down", "k_rope", "o"}
    direct = MLA(kind="mla", n_heads=2, kv_latent=8, rope_head_dim=2, bias=True).projection_biases()
    assert {name for name, on in direct.items() if on} == {"q", "kv_down", "k_rope", "o"}


def test_a_bias_per_projection():
    spec = with_model(ATTENTION, "attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, bias: {o: true}}")
    assert spec.model.block.attention.projection_biases() == {"q": False, "k": False, "v": False, "o": True}
    assert "      bias:\n        q: false\n        k: false\n        v: false\n        o: true\n" in canonical_yaml(spec)
    assert load_spec_text(canonical_yaml(spec)) == spec
    plain = with_model(ATTENTION, "attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, bias: false}")
    assert "      bias: false\n" in canonical_yaml(plain)  # a bool stays a bool: hashes of existing specs keep


def test_a_bias_on_a_projection_the_attention_does_not_have_names_it():
    error = error_of(ATTENTION, "attention: {kind: mla, n_heads: 4, q_latent: 16, kv_latent: 16, rope_head_dim: 4, bias: {q: true}}")
    assert (error.dotted_path, error.line) == ("model.block.attention.bias.q", 7)
    assert error.message == "there is no q projection to bias: this attention has q_latent set"
    error = error_of(ATTENTION, "attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, bias: {out: true}}")
    assert (error.dotted_path, error.expected) == ("model.block.attention.bias.out", "one of the keys of model.block.attention.bias: q, k, v, o")


def test_init_without_a_kind_is_gpt2s_and_a_scheme_is_chosen_by_kind():
    spec = with_model("  n_layers: 2\n", "  n_layers: 2\n  init: {std: 0.01}\n")
    assert spec.model.init == GPT2Init(std=0.01)
    assert "  init:\n    kind: gpt2\n    std: 0.01\n    scale_residual: true\n" in canonical_yaml(spec)
    spec = with_model("  n_layers: 2\n", "  n_layers: 2\n  init: {kind: tabulaprima}\n")
    assert spec.model.init == TabulaPrimaInit(kind="tabulaprima", std=0.02, kaiming_a=0.01)
    error = error_of("  n_layers: 2\n", "  n_layers: 2\n  init: {kind: xavier}\n")
    assert (error.dotted_path, error.line, error.expected) == ("model.init.kind", 5, "one of: gpt2, tabulaprima, from")
    error = error_of("  n_layers: 2\n", "  n_layers: 2\n  init: {kind: tabulaprima, scale_residual: true}\n")
    assert error.dotted_path == "model.init.scale_residual"


def test_init_from_pretrained_weights_names_its_source_and_needs_the_vocabulary():
    def init(value: str) -> str:
        return f"  n_layers: 2\n  vocab_size: 512\n  init: {value}\n"

    spec = with_model("  n_layers: 2\n", init("{kind: from, path: hf:org/name@v1.0}"))
    assert (spec.model.init.path, spec.model.init.hub_id, spec.model.init.std) == ("hf:org/name@v1.0", ("org/name", "v1.0"), 0.02)
    assert with_model("  n_layers: 2\n", init("{kind: from, path: ../llama}")).model.init.hub_id is None
    error = error_of("  n_layers: 2\n", init("{kind: from, path: hf:org/name/more}"))
    assert error.dotted_path == "model.init.path" and "hf:org/name or hf:org/name@revision" in error.message
    error = error_of("  n_layers: 2\n", "  n_layers: 2\n  init: {kind: from, path: ../llama}\n")  # vocab_size: auto
    assert error.dotted_path == "model.vocab_size" and "the pretrained model's (a number)" in error.message


def test_init_schemes_give_each_role_its_std():
    gpt2 = GPT2Init()
    assert gpt2.weight_std("attention", residual=False, fan_in=64, head_dim=16, n_layers=8) == 0.02
    assert gpt2.weight_std("mlp", residual=True, fan_in=64, head_dim=16, n_layers=8) == 0.02 / math.sqrt(16)
    assert GPT2Init(scale_residual=False).weight_std("mlp", residual=True, fan_in=64, head_dim=16, n_layers=8) == 0.02
    original = TabulaPrimaInit(kind="tabulaprima")
    assert original.weight_std("attention", residual=True, fan_in=1152, head_dim=128, n_layers=12) == 0.02 / math.sqrt(128)
    assert original.weight_std("mlp", residual=False, fan_in=1152, head_dim=128, n_layers=12) == pytest.approx(math.sqrt(2 / 1.0001) / math.sqrt(1152))
    assert original.weight_std("embedding", residual=False, fan_in=1152, head_dim=128, n_layers=12) == 0.02


def test_mlp_dropout_is_an_option_checked_like_the_models():
    spec = with_model("mlp: {kind: swiglu, hidden: 128}", "mlp: {kind: swiglu, hidden: 128, dropout: 0.1}")
    assert spec.model.block.mlp.dropout == 0.1
    error = error_of("mlp: {kind: swiglu, hidden: 128}", "mlp: {kind: gelu, hidden: 128, dropout: 1.5}")
    assert error.dotted_path == "model.block.mlp.dropout"


@pytest.mark.parametrize("attention, widths", [
    ("{kind: mha, n_heads: 4}", (4, 4, 16, 16, 16)),
    ("{kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 24}", (4, 2, 24, 24, 24)),
    ("{kind: mqa, n_heads: 8}", (8, 1, 8, 8, 8)),
    ("{kind: mla, n_heads: 4, kv_latent: 32, rope_head_dim: 4, v_head_dim: 12}", (4, 4, 16, 12, 4)),
])
def test_each_attention_kind_derives_its_widths(attention, widths):
    model = with_model(ATTENTION, f"attention: {attention}").model
    dims = model.attention_dims
    assert (dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.v_head_dim, dims.rotary_dim) == widths
    assert (model.head_dim, model.n_kv_heads, model.rotary_dim) == (widths[2], widths[1], widths[4])


def test_mqa_is_not_a_gqa():
    assert MQA(kind="mqa", n_heads=4).dims(64).n_kv_heads == 1
