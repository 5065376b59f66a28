"""Mamba-1's selective state-space mixer (Gu & Dao 2023) in plain PyTorch, and the `mamba` block
(a layer kind): x + mixer(norm(x)), then, with an MLP, x + mlp(mlp_norm(x)) (Jamba's layers).

    x, z = in_proj(h)                       (B, T, E) each; E = expand x d_model
    u = silu(conv1d(x))                     causal depthwise convolution over d_conv taps
    dt, B, C = x_proj(u)                    (B, T, dt_rank), (B, T, N), (B, T, N)
    dt = softplus(dt_proj(dt))              (B, T, E): input-dependent time steps
    y = scan(u, dt, A = -exp(A_log), B, C) + D u
    out = out_proj(y * silu(z))

Parameters (transformers' MambaMixer names and shapes, so the export copies them): `in_proj`,
`conv1d` (E, 1, d_conv), `x_proj`, `dt_proj`, `A_log` (E, N), `D` (E,), `out_proj`; Jamba's
`dt_norm`, `b_norm`, `c_norm` with inner_norms. A_log and D are named in `no_weight_decay`, as
Mamba trains them (runtime/optimizers.py honours it).

Generation carries a `MambaState` per layer instead of a KV cache: the last d_conv - 1 inputs of
the convolution and the (B, E, N) scan state, the same size at any length. `forward(h, state)`
continues from the state and leaves it at the end of `h` (a prompt of any length); one token is
`step`, the recurrence itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tabula.schemas.blocks.mamba import MambaMixer as MambaSpec
from tabula.schemas.model import MambaBlock as MambaBlockSpec

from ..hf_mapping import HFMapping, NoHF
from .init import WeightInit
from .norm import RMSNorm
from .registry import BLOCK, MLP, NORM
from .selective_scan import selective_scan

DT_FLOOR = 1e-4  # Mamba's floor on the initial time steps


@dataclass
class MambaState:
    """One layer's recurrent state for a batch: what the next token needs of everything before it."""

    conv: torch.Tensor  # (B, E, d_conv - 1) the convolution's last inputs
    ssm: torch.Tensor  # (B, E, N) the scan's state, fp32


class MambaToHF(HFMapping):
    """transformers' MambaMixer (MambaForCausalLM's `mixer`) and JambaMambaMixer: the same names;
    Jamba's inner norms are dt_layernorm, b_layernorm, c_layernorm."""

    renames = {"in_proj": "in_proj", "conv1d": "conv1d", "x_proj": "x_proj", "dt_proj": "dt_proj", "A_log": "A_log",
               "D": "D", "out_proj": "out_proj", "dt_norm": "dt_layernorm", "b_norm": "b_layernorm", "c_norm": "c_layernorm"}

    def config(self, spec: MambaSpec, model: Any, architecture: str) -> dict[str, Any]:
        dims = spec.dims(model.d_model)
        keys = {"d_conv": dims.d_conv, "d_state": dims.d_state, "expand": spec.expand, "dt_rank": dims.dt_rank,
                "conv_bias": spec.conv_bias, "proj_bias": spec.bias}
        if architecture == "JambaForCausalLM":
            return {f"mamba_{key}": value for key, value in keys.items()}
        return {"state_size": dims.d_state, "conv_kernel": dims.d_conv, "expand": spec.expand, "intermediate_size": dims.d_inner,
                "time_step_rank": dims.dt_rank, "use_conv_bias": spec.conv_bias, "use_bias": spec.bias, "hidden_act": "silu",
                "time_step_min": spec.dt_min, "time_step_max": spec.dt_max, "time_step_floor": DT_FLOOR}

    def problems(self, spec: MambaSpec, model: Any, architecture: str, path: str) -> list[str]:
        if architecture == "MambaForCausalLM" and spec.inner_norms:
            return [f"{path}.inner_norms: MambaForCausalLM's mixer has no dt/B/C norms (Jamba's has)"]
        if architecture == "JambaForCausalLM" and not spec.inner_norms:
            return [f"{path}.inner_norms: Jamba's mixer normalises dt, B and C; set inner_norms: true"]
        return []


class Mixer(nn.Module):
    """forward(h (B, T, C), state: MambaState | None) -> (B, T, C); with a state, continues from it
    and leaves it after the last token."""

    hf = MambaToHF()
    no_weight_decay = ("A_log", "D")  # runtime/optimizers.param_groups keeps them out of weight decay, as Mamba does

    def __init__(self, spec: MambaSpec, d_model: int, norm_eps: float) -> None:
        super().__init__()
        dims = spec.dims(d_model)
        E, N, K, R = dims.d_inner, dims.d_state, dims.d_conv, dims.dt_rank
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = E, N, K, R
        self.chunk, self.dt_min, self.dt_max = spec.chunk, spec.dt_min, spec.dt_max
        self.in_proj = nn.Linear(d_model, 2 * E, bias=spec.bias)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, bias=spec.conv_bias)  # its parameters; applied by `convolve`
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        norms: tuple[nn.Module, ...] = (RMSNorm(R, norm_eps), RMSNorm(N, norm_eps), RMSNorm(N, norm_eps)) if spec.inner_norms else (nn.Identity(),) * 3
        self.dt_norm, self.b_norm, self.c_norm = norms
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=spec.bias)

    @classmethod
    def build(cls, spec: MambaSpec, d_model: int, norm_eps: float = 1e-5) -> Mixer:
        return cls(spec, d_model, norm_eps)

    def empty_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> MambaState:
        """The state before the first token: zeros."""
        return MambaState(torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def forward(self, h: torch.Tensor, state: MambaState | None = None, n_valid: torch.Tensor | None = None) -> torch.Tensor:
        """With a state, `n_valid` (B,) says how many of each row's T tokens are real: the state is
        left after each row's last real token (the padding after it changes nothing)."""
        if state is not None and h.size(1) == 1 and n_valid is None:
            return self.step(h, state)
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (B, T, E) each
        u = F.silu(self.convolve(x.transpose(1, 2), state, n_valid).transpose(1, 2))  # (B, T, E)
        dt, B, C = self.selection(u)
        if n_valid is not None:  # a time step of 0 leaves the state as it is: a = 1, b = 0
            dt = dt * (torch.arange(h.size(1), device=h.device) < n_valid[:, None]).unsqueeze(-1)
        A = -torch.exp(self.A_log.float())  # (E, N)
        y, last = selective_scan(u, dt, A, B, C, None if state is None else state.ssm, self.chunk)  # (B, T, E)
        if state is not None:
            state.ssm = last
        y = y.to(h.dtype) + u * self.D
        return self.out_proj(y * F.silu(z))  # (B, T, C)

    def convolve(self, x: torch.Tensor, state: MambaState | None, n_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The causal depthwise convolution of x (B, E, T) after zeros or the state's last inputs; the
        state keeps the last d_conv - 1 inputs (up to each row's n_valid-th token)."""
        left = x.new_zeros(x.size(0), self.d_inner, self.d_conv - 1) if state is None else state.conv.to(x.dtype)
        window = torch.cat([left, x], dim=-1)  # (B, E, d_conv - 1 + T)
        if state is not None and n_valid is None:
            state.conv = window[:, :, window.size(-1) - (self.d_conv - 1):]
        elif state is not None and n_valid is not None:  # row b's last real inputs: window[b, :, n : n + d_conv - 1], n = n_valid[b]
            index = n_valid[:, None] + torch.arange(self.d_conv - 1, device=x.device)  # (B, d_conv - 1)
            state.conv = window.gather(2, index[:, None, :].expand(-1, self.d_inner, -1))
        # tap by tap: d_conv multiply-adds a channel and token (no matmul; a grouped conv1d's backward
        # would be the same numbers, which torch's FLOP counter miscounts as a dense convolution's)
        T, weight, bias = x.size(-1), self.conv1d.weight[:, 0], self.conv1d.bias  # weight (E, d_conv)
        y = window[:, :, :T] * weight[:, 0, None]
        for k in range(1, self.d_conv):
            y = y + window[:, :, k : k + T] * weight[:, k, None]
        return y if bias is None else y + bias[:, None]  # (B, E, T)

    def selection(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent dt (.., E) (after softplus), B and C (.., N) from u (.., E)."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(self.dt_norm(dt))), self.b_norm(B), self.c_norm(C)

    def step(self, h: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token: h (B, 1, C) -> (B, 1, C), the recurrence itself, advancing `state`."""
        x, z = self.in_proj(h[:, 0]).chunk(2, dim=-1)  # (B, E) each
        window = torch.cat([state.conv.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (B, E, d_conv)
        state.conv = window[:, :, 1:]
        conv = (window * self.conv1d.weight[:, 0]).sum(-1)  # (B, E)
        u = F.silu(conv + self.conv1d.bias if self.conv1d.bias is not None else conv)
        dt, B, C = self.selection(u)  # (B, E), (B, N), (B, N)
        A = -torch.exp(self.A_log.float())
        dt = dt.float()
        state.ssm = torch.exp(dt.unsqueeze(-1) * A) * state.ssm + (dt * u.float()).unsqueeze(-1) * B.float().unsqueeze(1)
        y = (state.ssm * C.float().unsqueeze(1)).sum(-1).to(h.dtype) + u * self.D  # (B, E)
        return self.out_proj(y * F.silu(z)).unsqueeze(1)

    @torch.no_grad()
    def init_weights(self, init: WeightInit) -> None:
        """Projections by the scheme (out_proj writes into the residual stream); the rest as Mamba
        draws it: conv taps uniform in +-1/sqrt(d_conv) (PyTorch's default), dt_proj's weight uniform
        in +-1/sqrt(dt_rank) and its bias the inverse softplus of time steps log-uniform in
        [dt_min, dt_max], A = -(1..N) per channel (S4D-real), D = 1."""
        init.linear_(self.in_proj, "in_proj", "mlp")
        init.linear_(self.x_proj, "x_proj", "mlp")
        init.linear_(self.out_proj, "out_proj", "mlp", residual=True)
        bound = 1 / math.sqrt(self.d_conv)
        init.uniform_(self.conv1d.weight, "conv1d.weight", -bound, bound)
        if self.conv1d.bias is not None:
            nn.init.zeros_(self.conv1d.bias)
        bound = 1 / math.sqrt(self.dt_rank)
        init.uniform_(self.dt_proj.weight, "dt_proj.weight", -bound, bound)
        low, high = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.empty(self.d_inner)
        init.uniform_(dt, "dt_proj.bias", low, high)
        dt = dt.exp().clamp(min=DT_FLOOR)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        nn.init.ones_(self.D)
        for norm in (self.dt_norm, self.b_norm, self.c_norm):
            if isinstance(norm, RMSNorm):
                norm.init_weights()


@BLOCK.register("mamba")
class MambaBlock(nn.Module):
    """x + mixer(norm(x)), then with an MLP x + mlp(mlp_norm(x)); dropout on the residual branches.
    Parameters `norm`, `mixer` (Mixer's), and `mlp_norm`, `mlp` with an MLP. forward takes the
    transformer block's arguments (rope tables, mask: unused; a Mamba layer has no attention).
    Generation runs it through runtime/inference/recurrent.py (`cache_kind`), one MambaState a layer."""

    cache_kind = "mamba"
    hf = NoHF("mamba has no Hugging Face equivalent of its own: it maps through its mixer, MLP and norm kinds")
    window = None  # no attention: the model builds no mask for it

    def __init__(self, spec: MambaBlockSpec, d_model: int, dropout: float) -> None:
        super().__init__()
        self.norm = NORM[spec.norm.kind].build(spec.norm, d_model)
        self.mixer = Mixer.build(spec.mixer, d_model, spec.norm.eps)
        self.mlp_norm = NORM[spec.norm.kind].build(spec.norm, d_model) if spec.mlp is not None else None
        self.mlp = MLP[spec.mlp.kind].build(spec.mlp, d_model) if spec.mlp is not None else None
        self.dropout = nn.Dropout(dropout)
        self.checkpoint_activations = False  # set by compile.apply_activation_checkpointing

    @classmethod
    def build(cls, spec: MambaBlockSpec, *, d_model: int, dropout: float) -> MambaBlock:
        return cls(spec, d_model, dropout)

    def forward(self, x: torch.Tensor, rope: Any = None, mask: Any = None, prefix: Any = None) -> torch.Tensor:
        if prefix is not None:
            raise ValueError("prefix tuning prepends keys and values to attention; a Mamba layer has none")
        x = x + self.dropout(self.mixer(self.norm(x)))
        if self.mlp is not None and self.mlp_norm is not None:
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x  # (B, T, C)

    def init_weights(self, init: WeightInit) -> None:
        self.norm.init_weights(init.at("norm"))
        self.mixer.init_weights(init.at("mixer"))
        if self.mlp is not None and self.mlp_norm is not None:
            self.mlp_norm.init_weights(init.at("mlp_norm"))
            self.mlp.init_weights(init.at("mlp"))
