"""Mixtral and DeepSeek-V3 (MLA + MoE with shared experts and dense first layers) exported by
write_hf load in transformers (from_pretrained, offline) and give tabula's logits within 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from compiler_specs import BASE  # noqa: E402
from test_parity_hf import perturb  # noqa: E402

from tabula.compiler import build_model  # noqa: E402
from tabula.compiler.hf import hf_problems, write_hf  # noqa: E402
from tabula.schemas.spec import Spec  # noqa: E402

MIXTRAL_MOE = {"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 24}
DEEPSEEK_MOE = {"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 24, "n_shared": 1, "router": "sigmoid", "balance": "bias", "scale": 2.5}
MLA = {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 16, "rope_head_dim": 4, "latent_norm": True}


def spec_with(block: dict, layers: list | None = None, n_layers: int = 3) -> Spec:
    raw = copy.deepcopy(BASE)
    raw["model"] |= {"n_layers": n_layers, "tie_embeddings": False, "init": {"std": 0.3}, "layers": layers or []}
    raw["model"]["block"] |= block
    return Spec.model_validate(raw)


def exported_logits(spec: Spec, tmp_path) -> tuple[torch.Tensor, torch.Tensor, object]:
    model = perturb(build_model(spec, device="cpu")).eval()
    for block in model.blocks:  # a balancing bias away from zero: a dropped mapping of it moves the choice
        bias = getattr(block.mlp, "expert_bias", None)
        if bias is not None:
            bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    write_hf(tmp_path, spec.model, model.state_dict(), model.vocab_size)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(0, model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids), hf(ids).logits, hf


def test_mixtral_exports_and_matches(tmp_path):
    ours, theirs, hf = exported_logits(spec_with({"mlp": MIXTRAL_MOE}), tmp_path)
    assert type(hf).__name__ == "MixtralForCausalLM"
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_deepseek_v3_with_dense_first_layers_exports_and_matches(tmp_path):
    dense = {"attention": MLA, "mlp": {"kind": "swiglu", "hidden": 40}}
    spec = spec_with({"attention": MLA, "mlp": DEEPSEEK_MOE}, layers=[{"start": 0, "stop": 1, "block": dense}])
    ours, theirs, hf = exported_logits(spec, tmp_path)
    assert type(hf).__name__ == "DeepseekV3ForCausalLM" and hf.config.first_k_dense_replace == 1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_what_the_architectures_cannot_express_is_named():
    assert hf_problems(spec_with({"mlp": DEEPSEEK_MOE}).model) == [
        "model.block.mlp.n_shared: Mixtral has no shared experts", "model.block.mlp.router: Mixtral routes by softmax",
        "model.block.mlp.scale: Mixtral does not scale them", "model.block.mlp.balance: Mixtral has no balancing bias"]
    moe_first = spec_with({"attention": MLA, "mlp": {"kind": "swiglu", "hidden": 40}},
                          layers=[{"start": 0, "stop": 1, "block": {"attention": MLA, "mlp": DEEPSEEK_MOE}}])
    assert any("dense first layers" in line for line in hf_problems(moe_first.model))
