"""Prompt and prefix tuning's virtual tokens: peft's own encoders, in the hook tabula's model offers.

peft wraps a Hugging Face model for these methods (PeftModelForCausalLM passes `inputs_embeds` or a
KV cache of `past_key_values`); tabula's Transformer is no such model, so it has one hook instead:
`model.virtual_tokens`, a module called on the token embeddings, `forward(x) -> (x, prefix)`:

    PromptTokens   peft's PromptEmbedding: n learned embeddings before the sequence's,
                   x (B, T, C) -> (B, n + T, C); prefix None
    PrefixTokens   peft's PrefixEncoder: n learned keys and values for every layer, in peft's layout
                   (view (B, n, 2 L, n_kv, hs), permute to (2 L, B, n_kv, n, hs): layer i's keys at 2i,
                   values at 2i + 1); x unchanged, prefix [(keys, values) (B, n_kv, n, hs)] * L

The encoders' parameters are what peft saves (`prompt_embeddings`, compiler/peft_export.py), so a
peft export loads into PeftModel.from_pretrained with the same logits.
"""

from __future__ import annotations

import torch
from torch import nn


class VirtualTokens(nn.Module):
    """n virtual positions before every sequence; `keys_only`: they are keys and values only (a prefix),
    else positions the blocks run over (a prompt)."""

    n: int
    keys_only: bool

    def __init__(self, n: int, encoder: nn.Module) -> None:
        super().__init__()
        self.n = n
        self.encoder = encoder

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output for every sequence of x's batch: (B, n, width), in x's dtype."""
        indices = torch.arange(self.n, device=x.device).expand(x.size(0), -1)  # (B, n)
        return self.encoder(indices).to(x.dtype)


class PromptTokens(VirtualTokens):
    """Prompt tuning: learned embeddings before the token embeddings."""

    keys_only = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([self.tokens(x), x], dim=1), None  # (B, n + T, C)


class PrefixTokens(VirtualTokens):
    """Prefix tuning: learned keys and values before each layer's own."""

    keys_only = True

    def __init__(self, n: int, encoder: nn.Module, *, n_layers: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__(n, encoder)
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        B = x.size(0)
        kv = self.tokens(x).view(B, self.n, 2 * self.n_layers, self.n_kv_heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)  # (2 L, B, n_kv, n, hs), peft's get_prompt layout
        return x, [(kv[2 * i], kv[2 * i + 1]) for i in range(self.n_layers)]
