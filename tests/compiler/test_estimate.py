"""Estimates: the analytic parameter count equals the built model's, activations are within 25% of
what the forward pass really keeps, and memory follows precision, ZeRO and offload."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from plan_specs import spec

from tabula.compiler.activations import activation_bytes
from tabula.compiler.estimate import (
    count_parameters,
    estimate,
    flops_per_token,
    model_state_bytes,
    parameter_shapes,
)
from tabula.compiler.plan import make_plan
from tabula.schemas.spec import Spec

SPECS = Path(__file__).resolve().parents[2] / "specs"

VARIANTS = {
    "gqa": {},
    "mha-bias-qknorm": {"model.block.attention": {"kind": "mha", "n_heads": 4, "bias": True, "qk_norm": True}},
    "mqa-window": {"model.block.attention": {"kind": "mqa", "n_heads": 4, "window": 16}},
    "mla": {"model.block.attention": {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 32, "rope_head_dim": 8}},
    "mla-no-q-latent": {"model.block.attention": {"kind": "mla", "n_heads": 4, "kv_latent": 32, "rope_head_dim": 8, "v_head_dim": 12}},
    "mla-latent-norm-bias": {
        "model.block.attention": {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 32, "rope_head_dim": 8, "latent_norm": True, "bias": True, "qk_norm": True}
    },
    "gelu-layernorm-learned-untied": {
        "model.block.norm": {"kind": "layernorm"},
        "model.block.mlp": {"kind": "gelu", "hidden": 256},
        "model.position": {"kind": "learned"},
        "model.tie_embeddings": False,
    },
    "layernorm-no-bias-swiglu-bias-nope": {
        "model.block.norm": {"kind": "layernorm", "bias": False},
        "model.block.mlp": {"kind": "swiglu", "hidden": 96, "bias": True},
        "model.position": {"kind": "none"},
    },
    "head-dim": {"model.block.attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 1, "head_dim": 24}},
}


def built_count(s: Spec, vocab: int) -> int:
    from tabula.compiler import build_model

    model = build_model(s, vocab_size=vocab)  # meta device: nothing allocated
    return sum(p.numel() for p in model.parameters())


def example_specs() -> list[Path]:
    return sorted(SPECS.glob("*.yaml")) + sorted((SPECS / "presets").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_count_equals_the_built_model(name):
    s = spec(**VARIANTS[name])
    assert count_parameters(s.model, 512).total == built_count(s, 512)


def test_parameter_names_and_shapes_are_the_built_models():
    from tabula.compiler import build_model

    s = spec(**VARIANTS["mla-latent-norm-bias"])
    built = [(name, tuple(p.shape)) for name, p in build_model(s, vocab_size=512).named_parameters()]
    assert built == parameter_shapes(s.model, 512)


@pytest.mark.parametrize("path", example_specs(), ids=lambda p: p.name)
def test_parameter_count_of_every_example_spec(path):
    from tabula.schemas.loader import load_spec

    s = load_spec(path)
    vocab = s.vocab_size or 8192
    assert count_parameters(s.model, vocab).total == built_count(s, vocab)


def test_embedding_split_and_tying():
    tied = count_parameters(spec().model, 512)
    untied = count_parameters(spec(**{"model.tie_embeddings": False}).model, 512)
    assert tied.embedding == 512 * 64
    assert untied.total - tied.total == untied.embedding - tied.embedding == 512 * 64
    assert tied.non_embedding == untied.non_embedding == tied.total - tied.embedding
    # the output projection is multiplied whether tied or not
    assert tied.matmul == untied.matmul == tied.non_embedding + 512 * 64


def test_flops_per_token_is_6n_plus_the_attention_term():
    s = spec()
    n = count_parameters(s.model, 512).matmul
    # 12 x n_layers x (n_heads x head_dim) x seq_len
    assert flops_per_token(s.model, 512, 128) == 6 * n + 12 * 2 * 64 * 128
    assert flops_per_token(s.model, 512, 64) < flops_per_token(s.model, 512, 128)


def test_model_state_memory_follows_precision_zero_and_offload():
    n = count_parameters(spec().model, 512).total
    device, host = model_state_bytes(spec(), 512, "fp32", 1)
    assert device == {"weights": 4 * n, "gradients": 4 * n, "master_weights": 0, "master_gradients": 0,
                      "optimizer_state": 8 * n, "weight_copies": 0, "gathered_weights": 0}
    autocast, _ = model_state_bytes(spec(), 512, "bf16", 1)
    assert autocast["weight_copies"] == 2 * count_parameters(spec().model, 512).matmul
    assert host == {}
    ds = {"parallel": {"backend": "deepspeed", "world_size": 4, "zero": {"stage": 2}}}
    device, _ = model_state_bytes(spec(**ds), 512, "bf16", 4)
    # ZeRO's 2 + 2 + 16 bytes a parameter: the optimizer's part (and the gradients at stage 2) / 4
    assert device["weights"] == 2 * n and device["weight_copies"] == 0  # no autocast: the weights are bf16
    assert device["gradients"] == -(-2 * n // 4)
    assert device["master_weights"] == device["master_gradients"] == -(-4 * n // 4)
    assert device["optimizer_state"] == -(-8 * n // 4)
    offload = {"parallel": {"backend": "deepspeed", "world_size": 4, "zero": {"stage": 3, "offload_optimizer": True, "offload_params": True}}}
    device, host = model_state_bytes(spec(**offload), 512, "bf16", 4)
    assert device["weights"] == device["gradients"] == device["optimizer_state"] == device["master_weights"] == 0
    assert host["optimizer_state"] == -(-8 * n // 4) and host["weights"] == -(-2 * n // 4)
    assert device["gathered_weights"] == 2 * 2 * 512 * 64  # the embedding and its gradient, in bf16
    lion, _ = model_state_bytes(spec(**{"train.optimizer": {"kind": "lion", "lr": 1e-4}}), 512, "fp32", 1)
    assert lion["optimizer_state"] == 4 * n
    factored, _ = model_state_bytes(spec(**{"train.optimizer": {"kind": "adafactor", "lr": 1e-3}}), 512, "fp32", 1)
    assert 0 < factored["optimizer_state"] < n


@pytest.mark.slow
def test_model_states_agree_with_deepspeeds_own_estimator():
    """DeepSpeed's estimators (16-bit training with Adam) against ours for the same choices. (Its
    estimator for stages 1 and 2 shards the gradients for both; stage 1 does not, so it is left out.)"""
    from tabula.runtime.deepspeed_check import deepspeed_memory_estimates

    s = spec(**{"model.n_layers": 8})
    params = count_parameters(s.model, 512).total
    largest = max(math.prod(shape) for _, shape in parameter_shapes(s.model, 512))
    theirs = {(e.stage, e.offload_optimizer, e.offload_params): e.per_device_bytes
              for e in deepspeed_memory_estimates(params, largest, world_size=4)}
    for stage, offload_optimizer, offload_params in [(2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)]:
        zero = {"stage": stage, "offload_optimizer": offload_optimizer, "offload_params": offload_params}
        ours = model_state_bytes(spec(**{"model.n_layers": 8, "parallel": {"backend": "deepspeed", "world_size": 4, "zero": zero}}), 512, "bf16", 4)[0]
        expected = theirs[(stage, offload_optimizer, offload_params)]
        assert abs(sum(ours.values()) - expected) / expected < 0.15, (stage, offload_optimizer, sum(ours.values()), expected)


def test_checkpointing_shrinks_the_activation_estimate():
    s = spec(**{"model.n_layers": 8})
    none = activation_bytes(s.model, 512, 4, 128, "fp32", "none")
    every_2 = activation_bytes(s.model, 512, 4, 128, "fp32", "every_n", 2)
    full = activation_bytes(s.model, 512, 4, 128, "fp32", "full")
    assert full < every_2 < none


def test_estimate_totals_and_time():
    s = spec(**{"data.curriculum": [{"until_tokens": "16k", "seq_len": 32}, {"seq_len": 128}]})
    plan = make_plan(s)
    est = estimate(s, plan, peak_flops=1e12, mfu=0.5)
    expected = sum(stage.steps * 4096 * flops_per_token(s.model, 512, stage.seq_len) for stage in plan.stages)
    assert est.total_flops == expected
    assert est.seconds == pytest.approx(expected / (1e12 * 0.5))
    assert est.memory_per_rank["total"] == sum(v for k, v in est.memory_per_rank.items() if k != "total")


def saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the distinct storages the forward pass saves for the backward (parameters and
    buffers excluded), plus the logits it returns: what stays alive until backward starts."""
    static = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in static:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, _ = model(ids, ids)
    saved[logits.untyped_storage().data_ptr()] = logits.untyped_storage().nbytes()
    return sum(saved.values())


def test_activation_estimate_within_25_percent_of_the_quickstart_models():
    """Measures, with saved-tensor hooks, the bytes the quickstart model's forward keeps for its
    backward (each storage once, weights excluded) at both stage lengths, and compares them with
    the estimate (fp32 on the CPU, as precision auto resolves here). One sequence stands for the
    plan's micro-batch: every term of the estimate is linear in the number of sequences."""
    from tabula.compiler import build_model
    from tabula.schemas.loader import load_spec

    s = load_spec(SPECS / "quickstart.yaml")
    vocab = s.vocab_size
    model = build_model(s, vocab_size=vocab).materialize("cpu", s.seed)
    for seq_len in (128, 256):
        ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(0))
        measured = saved_activation_bytes(model, ids)
        estimated = activation_bytes(s.model, vocab, 1, seq_len, "fp32")
        assert abs(estimated - measured) / measured < 0.25, (seq_len, estimated, measured)


@pytest.mark.parametrize("name", ["mla", "mqa-window", "gelu-layernorm-learned-untied", "mha-bias-qknorm"])
def test_activation_estimate_within_25_percent_for_other_blocks(name):
    from tabula.compiler import build_model

    s = spec(**VARIANTS[name])
    model = build_model(s, vocab_size=512).materialize("cpu", 0)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    measured = saved_activation_bytes(model, ids)
    estimated = activation_bytes(s.model, 512, 2, 64, "fp32")
    assert abs(estimated - measured) / measured < 0.25, (estimated, measured)



@pytest.mark.parametrize("name", ["gqa", "mla", "gelu-layernorm-learned-untied"])
def test_activation_estimate_within_25_percent_under_bf16_autocast(name):
    """One forward under CPU autocast (a single small step: bf16 is slow on this CPU); autocast's
    bf16 weight copies are among the saved tensors, so they join the estimate."""
    from tabula.compiler import build_model

    s = spec(**VARIANTS[name])
    model = build_model(s, vocab_size=512).materialize("cpu", 0)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = saved_activation_bytes(model, ids)
    copies = model_state_bytes(s, 512, "bf16", 1)[0]["weight_copies"]
    estimated = activation_bytes(s.model, 512, 2, 64, "bf16") + copies
    assert abs(estimated - measured) / measured < 0.25, (estimated, measured)


def test_memory_beyond_the_device_is_noted():
    s = spec()
    plan = make_plan(s)
    assert estimate(s, plan).notes == ()
    big = spec(**{"model.d_model": 4096, "model.n_layers": 48, "model.block.mlp": {"kind": "swiglu", "hidden": 11008}})
    notes = estimate(big, make_plan(big, device_type="cuda")).notes
    assert any("more than the 75 GiB" in note for note in notes)


@pytest.mark.parametrize("name", ["gqa", "mla", "gelu-layernorm-learned-untied"])
def test_activation_estimate_within_25_percent_in_16_bits_throughout(name):
    """Weights in bf16 and no autocast, as DeepSpeed runs bf16 (one small forward on the CPU)."""
    from tabula.compiler import build_model

    s = spec(**VARIANTS[name])
    model = build_model(s, vocab_size=512).materialize("cpu", 0).to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    measured = saved_activation_bytes(model, ids)
    estimated = activation_bytes(s.model, 512, 2, 64, "bf16", autocast=False)
    assert abs(estimated - measured) / measured < 0.25, (estimated, measured)
