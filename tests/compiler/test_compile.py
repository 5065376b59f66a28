"""Compile and activation-checkpointing policies: what they change, and that results agree."""

from __future__ import annotations

import pytest
import torch
from compiler_specs import tiny_spec

from tabula.compiler import apply_activation_checkpointing, apply_compile, build_model
from tabula.compiler.compile import is_compiled, should_compile
from tabula.compiler.model import cross_entropy
from tabula.schemas.model import Compile


def test_auto_compiles_on_cuda_only_and_booleans_force_it():
    assert should_compile(Compile(), "cuda")
    assert not should_compile(Compile(), "cpu")
    assert should_compile(Compile(enabled=True), "cpu")
    assert not should_compile(Compile(enabled=False), "cuda")


def test_block_scope_compiles_each_block_and_keeps_names():
    model = build_model(tiny_spec())
    names = [name for name, _ in model.named_parameters()]
    apply_compile(model, Compile(enabled=True), "cpu")
    assert all(is_compiled(block) for block in model.blocks) and not is_compiled(model)
    assert model.loss_fn is not cross_entropy  # the loss over the vocabulary is compiled too
    assert [name for name, _ in model.named_parameters()] == names
    untouched = apply_compile(build_model(tiny_spec()), Compile(), "cpu")  # auto on a CPU
    assert not any(is_compiled(block) for block in untouched.blocks)


def test_model_scope_compiles_the_forward():
    model = apply_compile(build_model(tiny_spec()), Compile(enabled=True, scope="model"), "cuda")
    assert is_compiled(model) and not any(is_compiled(block) for block in model.blocks)


def grads(model, ids):
    model.zero_grad()
    _, loss = model(ids, ids)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("policy, expected", [("full", [True, True, True]), ("every_n", [True, False, True]), ("none", [False] * 3)])
def test_activation_checkpointing_marks_blocks_and_leaves_gradients_unchanged(policy, expected):
    model = build_model(tiny_spec(n_layers=3), device="cpu")
    ids = torch.randint(0, 97, (2, 16))
    loss, reference = grads(model, ids)
    apply_activation_checkpointing(model, policy, every_n=2)
    assert [block.checkpoint_activations for block in model.blocks] == expected
    calls = [0] * len(model.blocks)
    for index, block in enumerate(model.blocks):
        block.attn_norm.register_forward_pre_hook(lambda *args, index=index: calls.__setitem__(index, calls[index] + 1))
    loss2, checkpointed = grads(model, ids)
    assert calls == [2 if marked else 1 for marked in expected]  # a checkpointed block runs again in backward
    torch.testing.assert_close(loss2, loss)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name])


@pytest.mark.slow
def test_compiled_blocks_compute_what_eager_blocks_do():
    model = build_model(tiny_spec(n_layers=2), device="cpu")
    ids = torch.randint(0, 97, (2, 16))
    loss, reference = grads(model, ids)
    apply_compile(model, Compile(enabled=True), "cpu")
    loss2, compiled = grads(model, ids)
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-5)
    for name in reference:
        torch.testing.assert_close(compiled[name], reference[name], rtol=1e-4, atol=1e-5)


def test_the_plans_decision_wins_over_the_spec_alone():
    from dataclasses import replace

    from tabula.compiler.plan import make_plan

    spec = tiny_spec()  # enabled: auto, which compiles on cuda without a plan
    eager = replace(make_plan(spec, device_type="cuda").compile, enabled=False)
    assert not any(is_compiled(b) for b in apply_compile(build_model(spec), spec.model.compile, "cuda", decision=eager).blocks)
    on = make_plan(tiny_spec(compile={"enabled": True}), device_type="cpu").compile
    model = apply_compile(build_model(tiny_spec(compile={"enabled": True})), Compile(enabled=True), "cpu", decision=on)
    assert all(is_compiled(block) for block in model.blocks)


def test_cuda_graphs_are_not_asked_for_on_a_cpu():
    model = apply_compile(build_model(tiny_spec()), Compile(enabled=True, mode="reduce-overhead"), "cpu")
    assert all(is_compiled(block) for block in model.blocks) and not model._forward_pre_hooks


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_shapes_serve_a_new_batch_and_length_without_compiling(dynamic):
    """The curriculum's stage change (16 x 8 -> 8 x 16 tokens): with dynamic shapes no new graph is compiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = build_model(tiny_spec(n_layers=2, d_model=32, block={"attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2}}), device="cpu")
    apply_compile(model, Compile(enabled=True, dynamic_shapes=dynamic), "cpu")
    for shape in ((16, 8), (8, 16), (4, 32)):
        before = counters["stats"]["unique_graphs"]
        ids = torch.randint(0, 97, shape)
        model(ids, ids)[1].backward()
        compiled = counters["stats"]["unique_graphs"] - before
        if shape == (16, 8):
            assert compiled == 2  # one block graph shared by both blocks, and the loss
        elif dynamic:
            assert compiled == 0, (shape, compiled)
        elif shape == (8, 16):
            assert compiled > 0, (shape, compiled)  # static shapes: the stage change compiles again
        # (static, a third shape: torch's automatic dynamic may serve it from the recompiled graph)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["block", "model"])
def test_cuda_graphs_train_as_eager_does(scope):
    """mode reduce-overhead on a GPU: CUDA graphs replayed step after step give eager's losses."""
    torch._dynamo.reset()
    spec = tiny_spec(compile={"enabled": True, "mode": "reduce-overhead", "scope": scope})
    eager = build_model(spec, device="cuda")
    graphed = build_model(spec, device="cuda")
    apply_compile(graphed, spec.model.compile, "cuda")
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for m in (eager, graphed)]
    for step in range(4):
        ids = torch.randint(0, 97, (4, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(step))
        losses = []
        for model, optimizer in zip((eager, graphed), optimizers):
            total = None
            for micro in range(2):  # gradient accumulation keeps each micro-batch's loss across a replay
                _, loss = model(ids[2 * micro: 2 * micro + 2], ids[2 * micro: 2 * micro + 2])
                loss.backward()
                total = loss.detach() if total is None else total + loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-3)
    torch._dynamo.reset()
