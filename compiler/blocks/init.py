"""Weight initialisation as each module applies it to its own parameters (torchtitan's
`init_weights`), by the spec's scheme (schemas/init.py).

Every weight draws from its own CPU generator seeded by (seed, the parameter's full name), so the
same seed gives the same weights on any device, and adding a module leaves the others' unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from tabula.schemas.init import FromWeights, GPT2Init, Role, TabulaPrimaInit


@dataclass(frozen=True)
class WeightInit:
    """What a module's `init_weights(init)` draws with: the scheme, the model's depth, the seed, and
    the module's name in the model (`prefix`, e.g. 'blocks.0.attn.'; `at` descends)."""

    scheme: GPT2Init | TabulaPrimaInit | FromWeights
    seed: int
    n_layers: int
    prefix: str = ""

    def at(self, name: str) -> WeightInit:
        """The same init for the child module `name`."""
        return replace(self, prefix=f"{self.prefix}{name}.")

    @torch.no_grad()
    def normal_(self, param: torch.Tensor, name: str, std: float) -> None:
        """Fills `param` (called `name` below this module) from normal(0, std), drawn on the CPU
        from the generator of (seed, full name)."""
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{self.prefix}{name}".encode()))
        param.copy_(torch.empty(param.shape).normal_(0.0, std, generator=generator))

    @torch.no_grad()
    def uniform_(self, param: torch.Tensor, name: str, low: float, high: float) -> None:
        """Fills `param` (called `name` below this module) uniformly in [low, high), drawn on the CPU
        from the generator of (seed, full name)."""
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{self.prefix}{name}".encode()))
        param.copy_(torch.empty(param.shape).uniform_(low, high, generator=generator))

    def weight_(self, param: torch.Tensor, name: str, role: Role, *, residual: bool = False, head_dim: int = 0) -> None:
        """A weight of `role` (a matrix (out, in): fan-in is its width), by the scheme;
        `residual`: it writes into the residual stream; `head_dim`: an attention head's width."""
        fan_in = param.shape[-1]
        std = self.scheme.weight_std(role, residual=residual, fan_in=fan_in, head_dim=head_dim, n_layers=self.n_layers)
        self.normal_(param, name, std)

    def linear_(self, linear: nn.Linear, name: str, role: Role, *, residual: bool = False, head_dim: int = 0) -> None:
        """nn.Linear `name`: its weight by the scheme, its bias (if any) zero."""
        self.weight_(linear.weight, f"{name}.weight", role, residual=residual, head_dim=head_dim)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
