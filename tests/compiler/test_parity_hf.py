"""tabula's models against Hugging Face transformers' reference implementations, built from
config objects (no downloads): same weights in, same logits out (fp32)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from compiler_specs import tiny_spec  # noqa: E402

from tabula.compiler import build_model  # noqa: E402
from tabula.compiler.hf import ExportError, hf_config, hf_problems, hf_state_dict  # noqa: E402


def reference(spec, model):
    """The transformers model hf_config names, holding `model`'s weights."""
    config = hf_config(spec.model, model.vocab_size)
    config_class = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    config_class._attn_implementation = "eager"
    hf = transformers.AutoModelForCausalLM.from_config(config_class)
    missing, unexpected = hf.load_state_dict(hf_state_dict(spec.model, model.state_dict()), strict=False)
    assert unexpected == []
    assert set(missing) <= ({"lm_head.weight"} if spec.model.tie_embeddings else set())
    return hf.eval()


def sharp(spec):
    """The spec with a large init std: attention far from uniform, so a wrong rotation or mask
    moves the logits well beyond the tolerance."""
    return spec.model_copy(update={"model": spec.model.model_copy(update={"init": spec.model.init.model_copy(update={"std": 0.3})})})


def perturb(model):
    """Norm scales and biases away from their init (1 and 0): a swapped or dropped mapping of
    either (attn_norm for mlp_norm, a q bias for a k bias) then changes the logits."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.rand(param.shape, generator=generator) - 0.5)
            elif "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    return model


def assert_same_logits(spec, seq_len=24):
    spec = sharp(spec)
    model = perturb(build_model(spec, device="cpu")).eval()
    hf = reference(spec, model)
    ids = torch.randint(0, model.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    return hf


@pytest.mark.parametrize(
    "attention",
    [
        {"kind": "mha", "n_heads": 4},
        {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
        {"kind": "mqa", "n_heads": 4},
        {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "bias": True},
    ],
    ids=["mha", "gqa", "mqa", "gqa-headdim-bias"],
)
def test_llama_parity(attention):
    hf = assert_same_logits(tiny_spec(block={"attention": attention}, tie_embeddings=False))
    assert type(hf).__name__ == "LlamaForCausalLM"


def test_llama_parity_tied_with_linear_rope_scaling_and_mlp_bias():
    spec = tiny_spec(
        position={"kind": "rope", "theta": 500000.0, "scaling": {"kind": "linear", "factor": 4.0}},
        block={"mlp": {"kind": "swiglu", "hidden": 80, "bias": True}},
    )
    assert type(assert_same_logits(spec)).__name__ == "LlamaForCausalLM"


def test_mistral_sliding_window_parity():
    spec = tiny_spec(block={"attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 5}})
    hf = assert_same_logits(spec, seq_len=24)  # the window is far shorter than the sequence
    assert type(hf).__name__ == "MistralForCausalLM"
    # ... and it matters: the same weights without the window give other logits.
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(0))
    windowed = perturb(build_model(sharp(spec), device="cpu")).eval()
    full = build_model(sharp(tiny_spec()), device="cpu").eval()
    full.load_state_dict(windowed.state_dict())
    with torch.no_grad():
        assert (windowed(ids)[:, 5:] - full(ids)[:, 5:]).abs().max() > 1e-2
        torch.testing.assert_close(windowed(ids)[:, :5], full(ids)[:, :5])


@pytest.mark.parametrize("q_latent", [24, None], ids=["q-latent", "direct-q"])
def test_deepseek_v3_mla_parity(q_latent):
    attention = {
        "kind": "mla",
        "n_heads": 4,
        "q_latent": q_latent,
        "kv_latent": 20,
        "rope_head_dim": 8,
        "v_head_dim": 12,
        "latent_norm": True,
        "bias": q_latent is not None,  # DeepSeek-V3 has q/kv latent biases, not a direct query's
    }
    spec = sharp(tiny_spec(block={"attention": attention}, tie_embeddings=False))
    model = build_model(spec, device="cpu")
    perturb(model)  # latent norm scales away from 1, so a wrong mapping shows
    hf = reference(spec, model)
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"block": {"mlp": {"kind": "gelu", "hidden": 128}}}, "model.block.mlp.kind"),
        ({"block": {"norm": {"kind": "layernorm"}}}, "model.block.norm.kind"),
        ({"position": {"kind": "learned"}}, "model.position.kind"),
        ({"block": {"attention": {"kind": "mha", "n_heads": 4, "qk_norm": True}}}, "model.block.attention.qk_norm"),
        (
            {"block": {"attention": {"kind": "mla", "n_heads": 4, "q_latent": 16, "kv_latent": 16, "rope_head_dim": 8}}},
            "model.block.attention.latent_norm",
        ),
    ],
)
def test_graphs_without_an_equivalent_name_what_does_not_map(change, field):
    spec = tiny_spec(**change)
    problems = hf_problems(spec.model)
    assert any(problem.startswith(field) for problem in problems), problems
    with pytest.raises(ExportError):
        hf_config(spec.model, 97)


@pytest.mark.parametrize("mixer", [{}, {"bias": True, "conv_bias": False, "dt_rank": 3, "expand": 1, "d_conv": 3}],
                         ids=["mamba", "mamba-biased-narrow"])
def test_mamba_parity(mixer):
    """Every layer a Mamba block: transformers' MambaForCausalLM (its slow path, no kernels) gives the
    same logits for the same weights."""
    import copy

    from compiler_specs import BASE
    from tabula.schemas.spec import Spec

    raw = copy.deepcopy(BASE)
    raw["model"].update(position={"kind": "none"}, n_layers=3, block={"kind": "mamba", "mixer": {"d_state": 8, "chunk": 8, **mixer}},
                        tie_embeddings=False, max_seq_len=40)
    hf = assert_same_logits(Spec.model_validate(raw), seq_len=40)  # 5 chunks of the scan
    assert type(hf).__name__ == "MambaForCausalLM"


def test_a_mamba_model_names_what_does_not_map_and_a_hybrid_is_refused():
    import copy

    from compiler_specs import BASE
    from tabula.schemas.spec import Spec

    raw = copy.deepcopy(BASE)
    raw["model"].update(position={"kind": "learned"}, block={"kind": "mamba", "norm": {"kind": "layernorm"}, "mlp": {"kind": "swiglu", "hidden": 32}})
    problems = hf_problems(Spec.model_validate(raw).model)
    assert [p.split(":")[0] for p in problems] == ["model.position.kind", "model.block.norm.kind", "model.block.mlp"]
    hybrid = copy.deepcopy(BASE)
    hybrid["model"]["layers"] = [{"start": 1, "block": {"kind": "mamba"}}]
    problems = hf_problems(Spec.model_validate(hybrid).model)
    assert problems and problems[0].startswith("model.layers: a model mixing Mamba and attention layers")
