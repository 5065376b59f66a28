"""FlexAttention (attention.backend: flex) against the dense-mask path it replaces: the same logits
for windows, documents, sparse patterns (global tokens, block-sparse strides), GQA and MLA; the
sparse patterns' own definition; the plan's FLOPs for them; and the spec's refusals.

FlexAttention runs forward only on the CPU (torch 2.13 has no CPU backward): the comparisons run
in no_grad there, and a training forward falls back to the dense mask of the same pattern. The
CUDA test compiles it and compares gradients too."""

from __future__ import annotations

import pytest
import torch
from compiler_specs import tiny_spec
from torch.nn.attention.flex_attention import BlockMask

from tabula.compiler import build_model
from tabula.compiler.blocks.attention import attend
from tabula.compiler.blocks.masks import block_mask, dense_mask
from tabula.compiler.estimate import flops_per_token
from tabula.schemas.blocks.sparsity import MaskPattern
from tabula.schemas.errors import SpecErrors
from tabula.schemas.loader import load_spec_text

T = 32
PATTERNS = [MaskPattern(5), MaskPattern(4, global_tokens=3), MaskPattern(3, block=4, stride=2), MaskPattern(6, 2, 8, 3)]


@pytest.mark.parametrize("pattern", PATTERNS + [MaskPattern(None)])
def test_keys_seen_counts_the_pairs_the_pattern_allows(pattern):
    for q in range(40):
        assert pattern.keys_seen(q) == sum(bool(pattern.allows(q, k)) for k in range(40)), q


def test_sparse_patterns_add_global_tokens_and_strided_blocks_to_the_window():
    mask = dense_mask(16, MaskPattern(2, global_tokens=1, block=4, stride=2), None, torch.device("cpu"))
    assert mask[9].nonzero().flatten().tolist() == [0, 1, 2, 3, 8, 9]  # global 0, block 0 (two back), own block, window
    assert mask[14].nonzero().flatten().tolist() == [0, 4, 5, 6, 7, 12, 13, 14]


def _models(attention: dict, **model):
    """The same tiny model (same seed, same weights) with the sdpa and the flex backend, in eval mode."""
    built = []
    for backend in ("sdpa", "flex"):
        spec = tiny_spec(block={"attention": {**attention, "backend": backend}}, **model)
        built.append(build_model(spec).materialize("cpu", spec.seed).eval())
    return built


CASES = {
    "window": ({"kind": "mha", "n_heads": 4, "window": 6}, False),
    "window_gqa_documents": ({"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 9}, True),
    "documents_only_mqa": ({"kind": "mqa", "n_heads": 4}, True),
    "global_and_strides_gqa": ({"kind": "gqa", "n_heads": 4, "n_kv_heads": 1, "window": 4,
                                "sparse": {"global_tokens": 2, "block": 4, "stride": 2}}, True),
    "mla_window": ({"kind": "mla", "n_heads": 4, "kv_latent": 16, "rope_head_dim": 4, "v_head_dim": 8, "window": 5}, False),
}


@pytest.mark.parametrize("case", CASES)
def test_flex_logits_equal_the_dense_mask_path(case):
    attention, documents = CASES[case]
    dense, flexed = _models(attention)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, T), generator=g)
    docs = torch.randint(0, 3, (2, T), generator=g).sort(dim=1).values if documents else None
    with torch.no_grad():
        assert isinstance(flexed.attention_mask(T, docs, ids.device), BlockMask)
        torch.testing.assert_close(flexed(ids, document_ids=docs), dense(ids, document_ids=docs), atol=1e-5, rtol=1e-5)


def test_flex_training_on_the_cpu_takes_the_dense_mask_of_the_same_pattern():
    dense, flexed = _models({"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 4, "sparse": {"global_tokens": 2}})
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(2))
    assert isinstance(flexed.attention_mask(T, None, ids.device), torch.Tensor)  # grad enabled: dense
    _, loss = flexed(ids, ids)
    loss.backward()
    _, expected = dense(ids, ids)
    torch.testing.assert_close(loss, expected)


def _layered(backends: tuple[str, str]):
    """Three layers: a window of 4 with global tokens (layers 0 and 2, backend backends[0]) and a
    whole-context layer 1 (backends[1]), in eval mode; same seed, same weights."""
    windowed = {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 4, "sparse": {"global_tokens": 2}, "backend": backends[0]}
    full = {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "backend": backends[1]}
    layer = {"norm": {"kind": "rmsnorm", "eps": 1e-5}, "attention": full, "mlp": {"kind": "swiglu", "hidden": 96}}
    spec = tiny_spec(block={"attention": windowed}, n_layers=3, layers=[{"start": 1, "stop": 2, "block": layer}])
    return build_model(spec).materialize("cpu", spec.seed).eval()


@pytest.mark.parametrize("documents", [False, True])
def test_a_layer_pattern_masks_each_layer_by_its_own_pattern_and_backend(documents):
    """Each layer's window, sparse pattern and backend come from its own block: flex everywhere, or
    flex on some layers only, gives the dense path's logits; and the layers' patterns differ (the
    whole-context layer is not windowed)."""
    reference = _layered(("sdpa", "sdpa"))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (2, T), generator=g)
    docs = torch.randint(0, 3, (2, T), generator=g).sort(dim=1).values if documents else None
    with torch.no_grad():
        expected = reference(ids, document_ids=docs)
        for backends in (("flex", "flex"), ("flex", "sdpa"), ("sdpa", "flex")):
            model = _layered(backends)
            assert len(set(model.layer_masks)) == 2 and model.layer_masks[0] == model.layer_masks[2] != model.layer_masks[1]
            torch.testing.assert_close(model(ids, document_ids=docs), expected, atol=1e-5, rtol=1e-5, msg=str(backends))
        mask = model.attention_mask(T, docs, ids.device, *model.layer_masks[1])  # the whole-context layer, flex
        assert (mask is None) != documents and (mask is None or isinstance(mask, BlockMask))
        all_windowed = _layered(("sdpa", "sdpa"))
        all_windowed.layer_masks[1] = all_windowed.layer_masks[0]
        assert not torch.allclose(all_windowed(ids, document_ids=docs), expected, atol=1e-3)


def test_block_mask_skips_the_blocks_nobody_sees():
    long = 1024
    window = block_mask(long, MaskPattern(128), None, torch.device("cpu"))
    assert window.sparsity() > 70  # of the (8 x 8) blocks of 128, 15 are computed
    causal = dense_mask(long, MaskPattern(128), None, torch.device("cpu"))
    assert causal.sum() == sum(MaskPattern(128).keys_seen(q) for q in range(long))


def test_plan_counts_the_pairs_flex_computes():
    def flops(**attention):
        spec = tiny_spec(block={"attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, **attention}}, max_seq_len=256)
        return flops_per_token(spec.model, 97, 256)

    full = flops()
    assert flops(window=32) == full  # sdpa computes the whole square, masked
    scores = 2 * 6 * 256 * 4 * (16 + 16)  # 2 layers of 6 T nh (qk + v) over the causal square
    density = MaskPattern(32).density(256)
    assert full - flops(window=32, backend="flex") == pytest.approx(scores * (1 - density), abs=1)
    assert flops(window=32, backend="flex") < flops(window=32, backend="flex", sparse={"global_tokens": 8}) < full


def _refusal(text: str) -> tuple[str, str]:
    with pytest.raises(SpecErrors) as refused:
        load_spec_text(SPEC.format(extra=text))
    [error] = refused.value.errors
    return ".".join(map(str, error.path)), error.message


SPEC = """
name: t
model:
  d_model: 32
  n_layers: 1
  max_seq_len: 32
  block:
    attention: {{kind: mha, n_heads: 4, {extra}}}
    mlp: {{kind: swiglu, hidden: 64}}
  dropout: 0.1
data:
  tokenizer: {{kind: file, path: tokenizer.json}}
  sources: {{text: {{kind: python_stdlib}}}}
  curriculum: [{{seq_len: 8, mix: {{text: 1.0}}}}]
train: {{batch_tokens: 64, optimizer: {{kind: adamw, lr: 1.0e-3}}, budget: {{tokens: 1024}}}}
"""


def test_spec_refuses_sparse_without_window_and_flex_with_dropout():
    path, message = _refusal("sparse: {global_tokens: 2}")
    assert path == "model.block.attention.sparse", path
    assert "set window" in message
    path, message = _refusal("window: 8, backend: flex")
    assert path == "model.block.attention.backend" and "no attention dropout" in message, (path, message)


@pytest.mark.gpu
def test_compiled_flex_on_cuda_matches_the_dense_mask_forward_and_backward():
    torch.manual_seed(0)
    B, H, KV, D = 2, 4, 2, 16
    q = torch.randn(B, H, 256, D, device="cuda", requires_grad=True)
    k = torch.randn(B, KV, 256, D, device="cuda", requires_grad=True)
    v = torch.randn(B, KV, 256, D, device="cuda", requires_grad=True)
    docs = torch.randint(0, 3, (B, 256), device="cuda").sort(dim=1).values
    pattern = MaskPattern(32, global_tokens=4, block=16, stride=4)
    out = attend(q, k, v, block_mask(256, pattern, docs, q.device), 0.0)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = attend(q, k, v, dense_mask(256, pattern, docs, q.device), 0.0)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
