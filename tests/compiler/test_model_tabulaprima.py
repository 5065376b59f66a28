"""MLA as the original TabulaPrima model computes it (github.com/JordanRL/TabulaPrima, model_arch.py:
MultiHeadLatentAttention), re-written here from its equations, against tabula's LatentAttention with
the weights mapped: the same outputs, its output projection's bias included (`bias: {o: true}`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tabula.compiler.blocks.mla import LatentAttention
from tabula.compiler.blocks.position import Rope, apply_rope
from tabula.schemas.model import MLA
from tabula.schemas.model import Rope as RopeSpec

D, H, LATENT, ROPE, T = 64, 4, 16, 4, 12  # head width 16: 12 content + 4 rotary
HEAD = D // H


class TabulaPrimaMLA(nn.Module):
    """Its projections, by its names: latents from x, content parts up from the latents, the
    rotary query from the query latent, the rotary key straight from x, values of full head width."""

    def __init__(self) -> None:
        super().__init__()
        content = HEAD - ROPE
        self.kv_down_proj = nn.Linear(D, LATENT, bias=False)
        self.q_down_proj = nn.Linear(D, LATENT, bias=False)
        self.k_c_proj = nn.Linear(LATENT, content * H, bias=False)
        self.v_proj = nn.Linear(LATENT, HEAD * H, bias=False)
        self.q_c_proj = nn.Linear(LATENT, content * H, bias=False)
        self.k_r_proj = nn.Linear(D, ROPE, bias=False)
        self.q_r_proj = nn.Linear(LATENT, ROPE * H, bias=False)
        self.out_proj = nn.Linear(D, D)  # the one projection with a bias

    def forward(self, x, cos, sin):
        B = x.size(0)
        c_kv, c_q = self.kv_down_proj(x), self.q_down_proj(x)
        q_c = self.q_c_proj(c_q).view(B, T, H, HEAD - ROPE)
        q_r = apply_rope(self.q_r_proj(c_q).view(B, T, H, ROPE), cos, sin)
        k_r = apply_rope(self.k_r_proj(x).view(B, T, 1, ROPE), cos, sin).expand(B, T, H, ROPE)
        k = torch.cat([self.k_c_proj(c_kv).view(B, T, H, HEAD - ROPE), k_r], dim=-1).transpose(1, 2)
        q = torch.cat([q_c, q_r], dim=-1).transpose(1, 2)
        v = self.v_proj(c_kv).view(B, T, H, HEAD).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(HEAD)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


def per_head_rows(content: torch.Tensor, rotary: torch.Tensor, content_dim: int, rotary_dim: int) -> torch.Tensor:
    """Rows of two per-head projections interleaved head by head: [content_h | rotary_h] for each h."""
    return torch.cat([content.view(H, content_dim, -1), rotary.view(H, rotary_dim, -1)], dim=1).reshape(-1, content.size(-1))


def test_latent_attention_computes_tabulaprimas_mla():
    torch.manual_seed(0)
    theirs = TabulaPrimaMLA()
    for p in theirs.parameters():
        nn.init.normal_(p, std=0.3)
    spec = MLA(kind="mla", n_heads=H, q_latent=LATENT, kv_latent=LATENT, rope_head_dim=ROPE, bias={"o": True})
    ours = LatentAttention(spec, d_model=D, norm_eps=1e-5, dropout=0.0)
    assert [name for name, p in ours.named_parameters() if name.endswith("bias")] == ["o_proj.bias"]
    with torch.no_grad():
        ours.q_down.weight.copy_(theirs.q_down_proj.weight)
        ours.q_up.weight.copy_(per_head_rows(theirs.q_c_proj.weight, theirs.q_r_proj.weight, HEAD - ROPE, ROPE))
        ours.kv_down.weight.copy_(theirs.kv_down_proj.weight)
        ours.kv_up.weight.copy_(per_head_rows(theirs.k_c_proj.weight, theirs.v_proj.weight, HEAD - ROPE, HEAD))
        ours.k_rope.weight.copy_(theirs.k_r_proj.weight)
        ours.o_proj.weight.copy_(theirs.out_proj.weight)
        ours.o_proj.bias.copy_(theirs.out_proj.bias)
    cos, sin = Rope(RopeSpec(kind="rope"), ROPE, T).tables(T)
    x = torch.randn(2, T, D)
    torch.testing.assert_close(ours(x, (cos, sin), None), theirs(x, cos, sin), rtol=1e-4, atol=1e-4)
