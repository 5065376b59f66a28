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
