"""The assembled model: meta build, seeded init, forward and loss, document masking, names."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from compiler_specs import tiny_spec

from tabula.compiler import build_model

MLA = {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 24, "rope_head_dim": 8}


def test_build_on_meta_allocates_nothing_and_materialize_initialises():
    model = build_model(tiny_spec())
    assert all(p.device.type == "meta" for p in model.parameters())
    model.materialize("cpu", seed=3)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.pos_embed.cos).all()  # RoPE's tables recomputed


def test_init_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = build_model(tiny_spec()).materialize("cpu", seed=3).state_dict()
    b = build_model(tiny_spec()).materialize("cpu", seed=3).state_dict()
    c = build_model(tiny_spec()).materialize("cpu", seed=4).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert not torch.equal(a["blocks.0.attn.q_proj.weight"], c["blocks.0.attn.q_proj.weight"])


def test_init_std_and_residual_scaling():
    spec = tiny_spec(n_layers=8, d_model=128, block={"mlp": {"kind": "swiglu", "hidden": 512}})
    model = build_model(spec, device="cpu")
    assert model.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert torch.equal(model.norm.weight, torch.ones(128))


def test_vocab_size_unknown_is_a_clear_error_and_the_override_wins():
    spec = tiny_spec(vocab_size="auto")  # a file tokenizer: only the file knows its size
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(spec)
    assert build_model(spec, vocab_size=50).embed.weight.shape == (50, 64)


def test_parameter_names_are_stable():
    names = {name for name, _ in build_model(tiny_spec(tie_embeddings=False)).named_parameters()}
    assert {"embed.weight", "norm.weight", "lm_head.weight", "blocks.1.attn.q_proj.weight", "blocks.0.attn.o_proj.weight",
            "blocks.0.attn_norm.weight", "blocks.0.mlp_norm.weight", "blocks.0.mlp.gate.weight", "blocks.0.mlp.up.weight",
            "blocks.0.mlp.down.weight"} <= names
    tied = build_model(tiny_spec())
    assert "lm_head.weight" not in {name for name, _ in tied.named_parameters()}  # listed once, as embed.weight
    assert tied.lm_head.weight is tied.embed.weight
    assert tied.materialize("cpu", seed=1).lm_head.weight is tied.embed.weight  # still tied once allocated
    mla = {name for name, _ in build_model(tiny_spec(block={"attention": {**MLA, "latent_norm": True}})).named_parameters()}
    assert {f"blocks.0.attn.{n}.weight" for n in ("q_down", "q_up", "kv_down", "kv_up", "k_rope", "o_proj", "q_latent_norm", "kv_latent_norm")} <= mla


def test_forward_logits_and_loss_ignoring_minus_100():
    model = build_model(tiny_spec(), device="cpu")
    ids = torch.randint(0, 97, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 97)
    targets = ids.clone()
    targets[:, :8] = -100
    _, loss = model(ids, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 97), ids[:, 8:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("attention", [{"kind": "gqa", "n_heads": 4, "n_kv_heads": 2}, MLA], ids=["gqa", "mla"])
def test_document_ids_keep_attention_inside_documents(attention):
    model = build_model(tiny_spec(block={"attention": attention}), device="cpu").eval()
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(0))
    documents = torch.tensor([[0] * 6 + [1] * 10])
    other = ids.clone()
    other[0, :6] = (other[0, :6] + 1) % 97  # a different first document
    with torch.no_grad():
        a, b = model(ids, document_ids=documents), model(other, document_ids=documents)
        plain = model(other)
    torch.testing.assert_close(a[:, 6:], b[:, 6:])
    assert not torch.allclose(plain[:, 6:], a[:, 6:])  # without document ids, document 0 leaks in


VARIANTS = {
    "gpt2-like": {"position": {"kind": "learned"}, "block": {"norm": {"kind": "layernorm"}, "mlp": {"kind": "gelu", "hidden": 128}}},
    "nope": {"position": {"kind": "none"},
             "block": {"norm": {"kind": "layernorm", "bias": False}, "mlp": {"kind": "gelu", "hidden": 128, "bias": False}}},
    "mha-qknorm-window": {"block": {"attention": {"kind": "mha", "n_heads": 4, "qk_norm": True, "window": 4, "bias": True}}},
    "mla-variants": {"block": {"attention": {**MLA, "q_latent": None, "qk_norm": True, "v_head_dim": 12, "bias": True}}},
    "dropout-untied": {"dropout": 0.1, "tie_embeddings": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_a_step(variant):
    change = VARIANTS[variant]
    model = build_model(tiny_spec(**change), device="cpu")
    ids = torch.randint(0, 97, (2, 16))
    _, loss = model(ids, ids)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The variant is really built: the parameters its spec asks for, and none it rules out.
    names = {name.removeprefix("blocks.0.") for name, _ in model.named_parameters() if not name.startswith("blocks.1.")}
    present, absent = VARIANT_PARAMETERS[variant]
    assert present <= names and not absent & names, (present - names, absent & names)
    # Dropout draws in training only: two training forwards differ exactly when dropout > 0.
    with torch.no_grad():
        differ = not torch.equal(model(ids), model(ids))
        assert differ == (change.get("dropout", 0.0) > 0)
        model.eval()
        assert torch.equal(model(ids), model(ids))


VARIANT_PARAMETERS = {  # (names that must exist, names that must not), block 0's without its prefix
    "gpt2-like": ({"pos_embed.weight", "attn_norm.bias", "mlp.up.bias", "norm.bias"}, {"mlp.gate.weight"}),
    "nope": ({"mlp.up.weight"}, {"pos_embed.weight", "attn_norm.bias", "mlp.up.bias", "norm.bias", "mlp.gate.weight"}),
    "mha-qknorm-window": ({"attn.q_norm.weight", "attn.k_norm.weight", "attn.q_proj.bias", "attn.o_proj.bias"}, {"mlp.up.bias"}),
    "mla-variants": ({"attn.q_proj.weight", "attn.kv_down.bias", "attn.q_norm.weight"}, {"attn.q_down.weight", "attn.k_proj.weight"}),
    "dropout-untied": ({"lm_head.weight", "embed.weight"}, set()),
}




def old_rule_weights(model: torch.nn.Module, seed: int, std: float, n_layers: int) -> dict[str, torch.Tensor]:
    """The initialisation before each module initialised itself, written out: every parameter by
    name, biases zero, norm scales one, other weights normal(0, std) (std / sqrt(2 n_layers) for
    names ending in attn.o_proj.weight or mlp.down.weight), each from the CPU generator seeded by
    crc32(f"{seed}:{name}")."""
    import zlib

    expected = {}
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            expected[name] = torch.zeros(param.shape)
        elif "norm" in name.rsplit(".", 2)[-2]:
            expected[name] = torch.ones(param.shape)
        else:
            residual = name.endswith(("attn.o_proj.weight", "mlp.down.weight"))
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            expected[name] = torch.empty(param.shape).normal_(0.0, std / math.sqrt(2 * n_layers) if residual else std, generator=generator)
    return expected


@pytest.mark.parametrize("change", [{}, {"block": {"attention": {**MLA, "latent_norm": True, "qk_norm": True, "bias": True}},
                                         "tie_embeddings": False},
                                    {"position": {"kind": "learned"}, "block": {"norm": {"kind": "layernorm"}, "mlp": {"kind": "gelu", "hidden": 64}}}],
                         ids=["gqa", "mla-untied", "gpt2-like"])
def test_init_draws_the_same_weights_as_before_modules_initialised_themselves(change):
    model = build_model(tiny_spec(**change)).materialize("cpu", seed=5)
    for name, expected in old_rule_weights(model, 5, 0.02, 2).items():
        assert torch.equal(dict(model.named_parameters())[name], expected), name


def test_init_of_the_quickstart_spec_is_the_old_rule():
    from tabula.schemas.loader import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "specs" / "quickstart.yaml")
    model = build_model(spec, vocab_size=spec.vocab_size).materialize("cpu", spec.seed)
    for name, expected in old_rule_weights(model, spec.seed, 0.02, spec.model.n_layers).items():
        assert torch.equal(dict(model.named_parameters())[name], expected), name


def test_tabulaprima_init_is_the_original_models():
    """The original's _init_weights: attention weights normal(0, 0.02 / sqrt(head width)), MLP
    weights torch's kaiming_normal_(a=0.01, fan_in, leaky_relu), the embedding normal(0, 0.02),
    biases zero, norms one; each drawn here by torch's own functions from the same generator."""
    import zlib

    spec = tiny_spec(init={"kind": "tabulaprima"}, position={"kind": "rope"},
                     block={"norm": {"kind": "layernorm"}, "mlp": {"kind": "gelu", "hidden": 128},
                            "attention": {**MLA, "bias": {"o": True}}})
    model = build_model(spec).materialize("cpu", seed=9)
    params = dict(model.named_parameters())

    def generator(name):
        return torch.Generator().manual_seed(zlib.crc32(f"9:{name}".encode()))

    head = spec.model.head_dim
    for name, param in params.items():
        if name.endswith("bias"):
            assert torch.equal(param, torch.zeros(param.shape)), name
        elif "norm" in name:
            assert torch.equal(param, torch.ones(param.shape)), name
        elif ".attn." in name:
            expected = torch.nn.init.normal_(torch.empty(param.shape), 0.0, 0.02 / math.sqrt(head), generator=generator(name))
            assert torch.equal(param, expected), name
        elif ".mlp." in name:
            expected = torch.nn.init.kaiming_normal_(torch.empty(param.shape), a=0.01, mode="fan_in", nonlinearity="leaky_relu",
                                                     generator=generator(name))
            assert torch.equal(param, expected), name
        else:
            assert name == "embed.weight"
            assert torch.equal(param, torch.empty(param.shape).normal_(0.0, 0.02, generator=generator(name)))
    assert params["blocks.0.attn.o_proj.bias"].shape == (64,)
