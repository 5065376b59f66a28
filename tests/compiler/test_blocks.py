"""Blocks on their own: masks, sliding windows, document masking, RoPE, MLA, the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tabula.compiler.blocks import ATTENTION, BLOCK, MLP, NORM, POSITION
from tabula.compiler.blocks.attention import attend, attention_mask
from tabula.compiler.blocks.position import Rope, apply_rope
from tabula.compiler.blocks.registry import Registry
from tabula.schemas.model import Rope as RopeSpec


def reference_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v written out, with a boolean (.., T, T) `allowed` mask."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def qkv(B=2, H=4, T=12, D=8, kv_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, kv_heads or H, T, D, generator=g)
    v = torch.randn(B, kv_heads or H, T, D, generator=g)
    return q, k, v


def test_registry_knows_every_spec_kind_and_refuses_duplicates():
    assert ATTENTION.kinds() == ["gqa", "mha", "mla", "mqa"]
    assert MLP.kinds() == ["gelu", "moe", "swiglu"]
    assert "transformer" in BLOCK.kinds()  # the default layer kind (others: a Mamba block...)
    assert NORM.kinds() == ["layernorm", "rmsnorm"]
    assert POSITION.kinds() == ["learned", "none", "rope"]
    registry = Registry("thing")
    registry.register("a")(lambda: None)
    with pytest.raises(ValueError, match="twice"):
        registry.register("a")(lambda: None)


def test_sliding_window_equals_reference_masked_attention():
    T, window = 12, 4
    q, k, v = qkv(T=T)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & (j > i - window)  # itself and the 3 before it
    mask = attention_mask(T, window, None, torch.device("cpu"))
    assert mask.sum(-1).tolist() == [min(t + 1, window) for t in range(T)]
    torch.testing.assert_close(attend(q, k, v, mask, 0.0), reference_attention(q, k, v, allowed))


def test_window_at_least_the_sequence_is_plain_causal():
    assert attention_mask(8, 8, None, torch.device("cpu")) is None
    assert attention_mask(8, None, None, torch.device("cpu")) is None


def test_document_masking_blocks_attention_across_documents():
    T = 10
    q, k, v = qkv(B=1, T=T)
    documents = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]])
    mask = attention_mask(T, None, documents, torch.device("cpu"))
    out = attend(q, k, v, mask, 0.0)
    # Changing the keys and values of document 0 leaves documents 1 and 2 untouched...
    k2, v2 = k.clone(), v.clone()
    k2[..., :3, :] += 5.0
    v2[..., :3, :] -= 5.0
    out2 = attend(q, k2, v2, mask, 0.0)
    torch.testing.assert_close(out[..., 3:, :], out2[..., 3:, :])
    assert not torch.allclose(out[..., :3, :], out2[..., :3, :])
    # ...and document 1 equals attention over document 1 alone.
    alone = F.scaled_dot_product_attention(q[..., 3:7, :], k[..., 3:7, :], v[..., 3:7, :], is_causal=True)
    torch.testing.assert_close(out[..., 3:7, :], alone)


def test_grouped_heads_with_and_without_mask_agree_with_repeated_heads():
    q, k, v = qkv(H=4, kv_heads=2)
    k_full, v_full = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    causal = attention_mask(12, 100, torch.zeros(2, 12, dtype=torch.long), torch.device("cpu"))  # all one document
    expected = F.scaled_dot_product_attention(q, k_full, v_full, is_causal=True)
    torch.testing.assert_close(attend(q, k, v, None, 0.0), expected)
    torch.testing.assert_close(attend(q, k, v, causal, 0.0), expected)


def test_rope_is_a_rotation_that_depends_on_relative_position():
    rope = Rope(RopeSpec(kind="rope"), dim=8, max_seq_len=16)
    cos, sin = rope.tables(16)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 8, generator=g).expand(1, 16, 1, 8)
    k = torch.randn(1, 1, 1, 8, generator=g).expand(1, 16, 1, 8)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # lengths kept
    dots = (rq[0, :, 0] @ rk[0, :, 0].T)  # (T, T): position i's query with position j's key
    torch.testing.assert_close(dots.diagonal(0), dots.diagonal(0)[:1].expand(16))  # depends on i - j only
    torch.testing.assert_close(dots.diagonal(3), dots.diagonal(3)[:1].expand(13))


def test_rope_linear_scaling_interpolates_positions():
    plain = Rope(RopeSpec(kind="rope"), dim=8, max_seq_len=16)
    scaled = Rope(RopeSpec(kind="rope", scaling={"kind": "linear", "factor": 2.0}), dim=8, max_seq_len=16)
    torch.testing.assert_close(scaled.cos[4], plain.cos[2])
    ntk = Rope(RopeSpec(kind="rope", scaling={"kind": "ntk", "factor": 4.0}), dim=8, max_seq_len=16)
    assert ntk.theta > plain.theta
    torch.testing.assert_close(ntk.cos[:, 0], plain.cos[:, 0])  # the highest frequency is kept
    narrow = Rope(RopeSpec(kind="rope", scaling={"kind": "ntk", "factor": 4.0}), dim=2, max_seq_len=16)  # one frequency
    torch.testing.assert_close(narrow.cos, Rope(RopeSpec(kind="rope"), dim=2, max_seq_len=16).cos)
