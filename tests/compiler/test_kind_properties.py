"""Property: for any small valid model spec, what the plan says without torch is what the built
model is: the same parameter names and shapes (so the count exactly), FLOPs equal to the
matmuls a forward and backward run (measured), activations near the tensors a forward keeps."""

from __future__ import annotations

import math

import torch
from compiler_specs import tiny_spec
from hypothesis import given, settings
from model_strategies import model_data
from test_estimate import saved_activation_bytes
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tabula.compiler import build_model
from tabula.compiler.activations import activation_bytes
from tabula.compiler.estimate import count_parameters, flops_per_token, parameter_shapes

SEQ_LEN = 32


@settings(max_examples=40, deadline=None)
@given(model=model_data())
def test_plan_shapes_and_count_are_the_built_models(model):
    spec = tiny_spec(**model)
    vocab = spec.model.vocab_size
    built = build_model(spec)  # meta: nothing allocated
    assert [(name, tuple(p.shape)) for name, p in built.named_parameters()] == parameter_shapes(spec.model, vocab)
    assert count_parameters(spec.model, vocab).total == sum(p.numel() for p in built.parameters())


@settings(max_examples=12, deadline=None)
@given(model=model_data())
def test_plan_flops_and_activations_agree_with_a_measured_step(model):
    spec = tiny_spec(**model)
    vocab = spec.model.vocab_size
    torch.manual_seed(0)
    built = build_model(spec).materialize("cpu", spec.seed)
    ids = torch.randint(0, vocab, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))

    # FLOPs: the matmuls of one forward and backward (attention in the math kernel, whose matmuls
    # the counter sees), per token. The plan's 6N also counts the norms' scales and the biases,
    # 6 FLOPs each per token, which no matmul multiplies; so are a Mamba mixer's convolution taps,
    # A and D, and its selective scan's elementwise work (its kind's scan_flops_per_token).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = built(ids, ids)
        loss.backward()
    elementwise = sum(math.prod(shape) for name, shape in parameter_shapes(spec.model, vocab)
                      if name.endswith(("bias", "conv1d.weight", ".A_log", ".D")) or "norm" in name.rsplit(".", 2)[-2])
    scans = sum(block.mixer.scan_flops_per_token(spec.model.d_model) for block in spec.model.layer_blocks if block.kind == "mamba")
    measured = counter.get_total_flops() / ids.numel()
    assert flops_per_token(spec.model, vocab, SEQ_LEN) == measured + 6 * elementwise + scans

    # Activations: within the 25% the estimate is held to for the example specs.
    measured = saved_activation_bytes(built, ids)
    estimated = activation_bytes(spec.model, vocab, 2, SEQ_LEN, "fp32")
    assert abs(estimated - measured) / measured < 0.25, (estimated, measured)
