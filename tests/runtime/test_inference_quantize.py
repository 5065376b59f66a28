"""Weight-only quantization (runtime/inference/quantize.py): int8 and group-wise int4 through torchao keep
a trained model's held-out perplexity within a stated bound of fp32, shrink its Linear weights, and refuse
what cannot be done with QuantizationUnsupported."""

from __future__ import annotations

import copy

import pytest
import torch

from chain_models import markov_batches, train_tiny
from runtime_helpers import one_thread_fixture
from tabula.runtime.errors import RunInputError
from tabula.runtime.inference.perplexity import perplexity
from tabula.runtime.inference.quantize import QuantizationUnsupported, quantize_model, weight_bytes

one_thread = one_thread_fixture()

# The bounds this test holds quantization to, relative to the fp32 model's held-out perplexity (~2.7 on the
# chain, against 64 for a uniform guess): measured 1.0000 for int8 and 1.0006-1.001 for int4 (group 16-64).
INT8_BOUND = 1.01
INT4_BOUND = 1.05


@pytest.fixture(scope="module")
def trained():
    return train_tiny()


@pytest.fixture(scope="module")
def held_out():
    return markov_batches(64, seed=2)


@pytest.mark.parametrize("method, group_size, bound", [("int8", None, INT8_BOUND), ("int4", None, INT4_BOUND), ("int4", 16, INT4_BOUND)])
def test_quantized_perplexity_stays_within_its_bound_of_fp32(trained, held_out, method, group_size, bound):
    fp32 = perplexity(trained, held_out)
    assert fp32 < 4.0  # the model learned the chain: a damaged quantization would show
    model = copy.deepcopy(trained)
    result = quantize_model(model, method, group_size=group_size)
    quantized = perplexity(model, held_out)
    assert quantized <= fp32 * bound, (method, group_size, fp32, quantized)
    assert result.method == method and result.group_size == (group_size or (64 if method == "int4" else None))
    # every block Linear quantized; the head tied to the embedding kept (it is the embedding's weight)
    assert len(result.layers) == 2 * 7 and result.kept == ("lm_head (tied to the embedding)",)
    assert model.lm_head.weight is model.embed.weight
    assert type(model.blocks[0].mlp.up.weight).__name__ != "Parameter"


def test_the_weights_shrink_to_about_a_byte_a_number(trained):
    model = copy.deepcopy(trained)
    linear_fp = sum(m.weight.numel() * 4 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head")
    result = quantize_model(model, "int8")
    assert result.fp_weight_bytes == weight_bytes(trained)
    saved = result.fp_weight_bytes - result.weight_bytes
    # int8 keeps 1 byte of each 4 and a scale a row: at least 70% of the Linear bytes go
    assert saved >= 0.70 * linear_fp, (saved, linear_fp)


def test_what_cannot_be_done_is_refused_and_changes_nothing(trained):
    model = copy.deepcopy(trained)
    with pytest.raises(QuantizationUnsupported, match="unknown quantization 'int3'"):
        quantize_model(model, "int3")
    with pytest.raises(QuantizationUnsupported, match=r"group size 48 does not divide the inputs of 14 layers, e.g. blocks\.0\.attn\.q_proj \(64\).*fit: 64, 32, 16"):
        quantize_model(model, "int4", group_size=48)
    assert isinstance(QuantizationUnsupported("x"), RunInputError)  # the CLI's bad-input family: exit 2
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # nothing quantized by a refusal
    meta = copy.deepcopy(trained).to("meta")
    with pytest.raises(QuantizationUnsupported, match="runs on cpu or cuda, not on meta"):
        quantize_model(meta, "int8")
