"""train.finetune applied by compiler/adapters.py: peft's layers on every attention kind, what they train
(held to the plan's torch-free counts), what they leave alone, and the merge back into plain weights."""

from __future__ import annotations

import copy

import pytest
import torch
from compiler_specs import BASE
from kind_examples import ATTENTION

from tabula.compiler import build_model
from tabula.compiler.adapters import FinetuneError, apply_finetune, merge_adapters
from tabula.compiler.estimate import count_trainable, model_state_bytes, trainable_shapes
from tabula.schemas.spec import Spec

METHODS = {
    "lora": {"kind": "lora", "rank": 4, "targets": ["attn.*", "mlp.*"]},
    "dora": {"kind": "dora", "rank": 2, "rslora": True, "targets": ["blocks.*.attn.*", "down"]},
    "prompt_tuning": {"kind": "prompt_tuning", "virtual_tokens": 3},
    "prefix_tuning": {"kind": "prefix_tuning", "virtual_tokens": 3},
    "prefix_projection": {"kind": "prefix_tuning", "virtual_tokens": 3, "projection": True, "projection_hidden": 20},
    "full": {"kind": "full", "freeze": ["embed.*", "blocks.0.*"]},
}
KINDS = [(kind, index) for kind, examples in ATTENTION.items() for index in range(len(examples))]


def spec_with(finetune: dict | None, attention: dict | None = None, **model) -> Spec:
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    if attention is not None:
        raw["model"]["block"]["attention"] = attention
    raw["train"]["finetune"] = finetune
    return Spec.model_validate(raw)


def built(spec: Spec, seed: int = 3):
    model = build_model(spec, device="cpu")
    return apply_finetune(model, spec.train.finetune, seed=seed, model_spec=spec.model)


def fits(method: str, attention: dict) -> bool:
    return not (method.startswith("prefix") and attention["kind"] == "mla")


@pytest.mark.parametrize("kind,index", KINDS, ids=[f"{k}{i}" for k, i in KINDS])
@pytest.mark.parametrize("method", list(METHODS))
def test_what_trains_is_what_the_plan_counts(kind, index, method):
    attention = ATTENTION[kind][index]
    if not fits(method, attention):
        pytest.skip("prefix tuning needs keys and values of one width")
    spec = spec_with(METHODS[method], attention)
    model = built(spec)
    trainable = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == dict(trainable_shapes(spec, 97))
    counted = count_trainable(spec, 97)
    assert (model.finetune.trainable, model.finetune.frozen) == (counted.trainable, counted.frozen)
    assert counted.trainable + counted.frozen == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind,index", KINDS, ids=[f"{k}{i}" for k, i in KINDS])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_step_moves_the_trained_parameters_alone(kind, index, method):
    attention = ATTENTION[kind][index]
    if not fits(method, attention):
        pytest.skip("prefix tuning needs keys and values of one width")
    torch.manual_seed(1)  # peft's adapter init and the ids draw from the global generator: not from earlier tests' state
    spec = spec_with(METHODS[method], attention)
    model = built(spec)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 97, (2, 12))
    for _ in range(2):  # LoRA's B starts at zero: A moves from the second step
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        moved = not torch.equal(before[name], param)
        assert moved == param.requires_grad, f"{name}: moved {moved}, trainable {param.requires_grad}"


def test_lora_targets_every_projection_of_mla():
    mla = {"kind": "mla", "n_heads": 4, "q_latent": 24, "kv_latent": 16, "rope_head_dim": 4, "latent_norm": True}
    spec = spec_with({"kind": "lora", "rank": 2, "targets": ["q_down", "q_up", "kv_down", "kv_up", "o_proj"]}, mla)
    model = built(spec)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted == {f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_down", "q_up", "kv_down", "kv_up", "o_proj")}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_start_as_the_base_and_merge_into_plain_weights(method):
    spec = spec_with(METHODS[method])
    base = build_model(spec, device="cpu").eval()
    model = built(spec).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), base(ids))  # B = 0: the adapted model starts as its base
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
        adapted = model(ids)
        assert not torch.allclose(adapted, base(ids), atol=1e-4)
        merged = merge_adapters(model)(ids)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in base.named_parameters()]
    assert model.finetune is None


def test_adapters_are_drawn_from_the_seed_alone():
    spec = spec_with(METHODS["dora"])
    a, b = build_model(spec, device="cpu"), build_model(spec, device="cpu")
    state = torch.get_rng_state()
    for model in (a, b):
        apply_finetune(model, spec.train.finetune, seed=5, model_spec=spec.model)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name
    c = built(spec, seed=6)
    assert not torch.equal(a.blocks[0].attn.q_proj.lora_A["default"].weight, c.blocks[0].attn.q_proj.lora_A["default"].weight)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_see_every_document_and_leave_the_sequence_causal(method):
    spec = spec_with(METHODS[method])
    model = built(spec).eval()
    ids = torch.randint(0, 97, (1, 10))
    other = ids.clone()
    other[:, :4] = (ids[:, :4] + 1) % 97  # another first document
    documents = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        whole = model(ids)
        torch.testing.assert_close(model(ids[:, :6]), whole[:, :6])  # causal: later tokens change nothing before them
        masked, masked_other = model(ids, document_ids=documents), model(other, document_ids=documents)
        no_prompt = build_model(spec, device="cpu").eval()(ids, document_ids=documents)
    torch.testing.assert_close(masked[:, :4], whole[:, :4])
    # the second document sees the virtual tokens, never the first document
    torch.testing.assert_close(masked_other[:, 4:], masked[:, 4:])
    assert not torch.allclose(masked[:, 4:], no_prompt[:, 4:], atol=1e-4)


def test_a_glob_that_matches_nothing_is_a_typed_error_at_build_time():
    spec = spec_with(None)
    lora = spec_with(METHODS["lora"]).train.finetune.model_copy(update={"targets": ["attn.qproj"]})
    with pytest.raises(FinetuneError, match=r"'attn.qproj' matches no linear layer; the linear layers are: blocks\.\*\.attn\.q_proj"):
        apply_finetune(build_model(spec, device="cpu"), lora, seed=1)


def test_qlora_is_refused_off_cuda():
    spec = spec_with({"kind": "qlora", "rank": 4})
    with pytest.raises(FinetuneError, match="needs a CUDA GPU"):
        built(spec)


@pytest.mark.gpu
def test_qlora_holds_the_base_in_four_bits_and_trains_its_adapters():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    spec = spec_with({"kind": "qlora", "rank": 4})
    model = build_model(spec, device="cpu").materialize("cuda", spec.seed)
    apply_finetune(model, spec.train.finetune, seed=1, precision="bf16", model_spec=spec.model)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ids = torch.randint(0, 97, (2, 12), device="cuda")
    _, loss = model(ids, ids)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_plan_counts_what_a_method_saves():
    full = spec_with(None)
    lora = spec_with(METHODS["lora"])
    whole, _ = model_state_bytes(full, 97, "fp32", 1)
    adapted, _ = model_state_bytes(lora, 97, "fp32", 1)
    trained = count_trainable(lora, 97)
    assert adapted["gradients"] == trained.trainable * 4 and adapted["optimizer_state"] == trained.trainable * 8
    assert adapted["weights"] == whole["weights"] + trained.added * 4
    assert model_state_bytes(lora, 97, "fp32", 1, every_parameter=True)[0]["gradients"] == whole["gradients"]


def test_activation_checkpointing_keeps_the_adapters_gradients():
    from tabula.compiler import apply_activation_checkpointing

    spec = spec_with(METHODS["dora"])
    grads = []
    for policy in ("none", "full"):
        model = built(spec)
        apply_activation_checkpointing(model, policy)
        ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        _, loss = model(ids, ids)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lora_compiles_with_the_model():
    from tabula.compiler import apply_compile

    spec = spec_with(METHODS["lora"], compile={"enabled": True})
    eager, compiled = built(spec), built(spec)
    apply_compile(compiled, spec.model.compile, "cpu")
    ids = torch.randint(0, 97, (2, 12))
    losses = []
    for model in (eager, compiled):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            _, loss = model(ids, ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
