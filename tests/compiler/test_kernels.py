"""model.kernels: chunked cross-entropy equals the standard loss forward and backward (every device),
Liger Kernel's kernels equal the reference modules on CUDA (marked gpu) and are refused elsewhere
with one clear line; the plan counts the activation memory a fused loss saves."""

from __future__ import annotations

import pytest
import torch
from compiler_specs import BASE, tiny_spec

from tabula.compiler import build_model, make_plan
from tabula.compiler.activations import activation_bytes
from tabula.compiler.estimate import estimate
from tabula.compiler.kernels import LigerUnavailable, chunked_linear_cross_entropy
from tabula.compiler.model import cross_entropy
from tabula.schemas.errors import SpecErrors
from tabula.schemas.spec import Spec

VOCAB = BASE["model"]["vocab_size"]


def _pair(untied: bool = False, **kernels):
    """The tiny model with the standard loss and with `kernels`, same weights."""
    models = []
    for chosen in ({}, kernels):
        spec = tiny_spec(kernels=chosen, tie_embeddings=not untied)
        models.append(build_model(spec).materialize("cpu", spec.seed))
    return models


def _grads(model, ids, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(ids, targets)
    loss.backward()
    return logits, loss, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("untied", [False, True])
def test_chunked_cross_entropy_equals_the_standard_loss_and_gradients(untied):
    standard, chunked = _pair(untied, cross_entropy="chunked", chunk_tokens=7)  # chunks that do not divide the 2 x 24 tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 24), generator=g)
    targets = torch.randint(0, VOCAB, (2, 24), generator=g)
    targets[0, :9] = -100  # a prompt the loss leaves out
    logits, loss, grads = _grads(chunked, ids, targets)
    assert logits is None  # the full logits are never made
    _, expected, expected_grads = _grads(standard, ids, targets)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert chunked(ids).shape == (2, 24, VOCAB)  # without targets: logits, as ever


def test_a_mixture_of_experts_aux_loss_joins_the_chunked_loss_in_training():
    """The fused loss returns (None, loss): the MoE balancing and z-losses are still added (training mode only)."""
    moe = {"mlp": {"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 16, "aux_loss_weight": 0.5, "z_loss_weight": 0.1}}
    models = []
    for kernels in ({}, {"cross_entropy": "chunked", "chunk_tokens": 7}):
        spec = tiny_spec(block=moe, kernels=kernels)
        models.append(build_model(spec).materialize("cpu", spec.seed))
    standard, chunked = models
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    _, loss, grads = _grads(chunked, ids, ids)
    _, expected, expected_grads = _grads(standard, ids, ids)
    aux = sum(block.mlp.aux_loss for block in chunked.blocks)
    assert float(aux.detach()) > 0.5
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert grads["blocks.0.mlp.router"].abs().sum() > 0  # the router learns from the aux loss
    chunked.eval()
    with torch.no_grad():
        torch.testing.assert_close(chunked(ids, ids)[1], loss - aux, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_of_all_ignored_targets_is_zero_with_zero_gradients():
    x = torch.randn(3, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    loss = chunked_linear_cross_entropy(x, weight, torch.full((3, 5), -100), chunk_tokens=4)
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any() and not weight.grad.any()
    torch.testing.assert_close(loss, cross_entropy(x @ weight.T, torch.full((3, 5), -100)))


def test_liger_is_refused_off_cuda_by_the_plan_and_by_the_module():
    spec = tiny_spec(kernels={"rmsnorm": "liger", "cross_entropy": "liger"})
    with pytest.raises(SpecErrors) as refused:
        make_plan(spec, device_type="cpu")
    paths = {".".join(map(str, error.path)) for error in refused.value.errors}
    assert paths == {"model.kernels.rmsnorm", "model.kernels.cross_entropy"}
    assert all("CUDA" in error.message for error in refused.value.errors)
    model = build_model(spec).materialize("cpu", spec.seed)
    with pytest.raises(LigerUnavailable, match="model.kernels: rmsnorm is liger, whose Triton kernels run on CUDA GPUs only"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_fused_loss_is_refused_under_zero_3():
    raw = tiny_spec(kernels={"cross_entropy": "chunked"}).model_dump(mode="json", exclude_none=True)
    raw["parallel"] = {"backend": "deepspeed", "zero": {"stage": 3}}
    with pytest.raises(SpecErrors) as refused:
        make_plan(Spec.model_validate(raw), device_type="cuda")
    [error] = refused.value.errors
    assert error.path == ("model", "kernels", "cross_entropy") and "ZeRO-3" in error.message


def test_plan_counts_the_logits_a_fused_loss_does_not_keep():
    spec = tiny_spec(kernels={"cross_entropy": "chunked", "chunk_tokens": 16})
    standard = tiny_spec()
    tokens, seq_len = 64, 32
    fused = activation_bytes(spec.model, VOCAB, 2, seq_len, "fp32")
    full = activation_bytes(standard.model, VOCAB, 2, seq_len, "fp32")
    assert full - fused == (tokens - 16) * VOCAB * 8  # logits + log-softmax per token, less one chunk's (logits + softmax)
    plan = make_plan(spec, device_type="cpu")
    assert estimate(spec, plan).kernel_memory_saved > 0 == estimate(standard, make_plan(standard, device_type="cpu")).kernel_memory_saved
    # Measured: what the forward keeps for the backward differs by the logits and their log-softmax.
    models = _pair(cross_entropy="chunked", chunk_tokens=16)
    ids = torch.randint(0, VOCAB, (2, seq_len), generator=torch.Generator().manual_seed(0))
    kept = [_kept_bytes(model, ids) for model in models]
    assert kept[0] - kept[1] == pytest.approx(tokens * VOCAB * 8, rel=0.05)


def _kept_bytes(model, ids) -> int:
    """Bytes of the distinct storages a forward keeps until the backward (parameters excluded), the logits included."""
    static = {t.untyped_storage().data_ptr() for t in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in static:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, _ = model(ids, ids)
    if logits is not None:
        saved[logits.untyped_storage().data_ptr()] = logits.untyped_storage().nbytes()
    return sum(saved.values())


# ---------------------------------------------------------------- CUDA: Liger Kernel against the reference


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", [{"cross_entropy": "liger"}, {"cross_entropy": "chunked", "chunk_tokens": 5},
                                     {"rmsnorm": "liger"}, {"rope": "liger"}, {"swiglu": "liger"},
                                     {"cross_entropy": "liger", "rmsnorm": "liger", "rope": "liger", "swiglu": "liger"}])
def test_kernels_on_cuda_equal_the_reference_forward_and_backward(kernels):
    pytest.importorskip("liger_kernel")
    models = []
    for chosen in ({}, kernels):
        spec = tiny_spec(kernels=chosen)
        models.append(build_model(spec).materialize("cuda", spec.seed))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 24), generator=g).cuda()
    targets = torch.randint(0, VOCAB, (2, 24), generator=g).cuda()
    targets[1, :5] = -100
    _, expected, expected_grads = _grads(models[0], ids, targets)
    _, loss, grads = _grads(models[1], ids, targets)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(models[1](ids), models[0](ids), atol=1e-5, rtol=1e-5)
