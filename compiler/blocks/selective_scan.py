"""The selective scan of Mamba-1 in plain PyTorch: parallel within a chunk, chunk by chunk along
the sequence, so memory grows with the chunk and not with the sequence times the state.

    h_t = a_t * h_{t-1} + b_t     a_t = exp(dt_t A)   b_t = dt_t x_t B_t     (per channel e, state n)
    y_t = sum_n C_t[n] h_t[e, n]

Within a chunk of K tokens the recurrence is an inclusive scan of the affine maps h -> a h + b,
composed pairwise in log2(K) doubling steps (Hillis & Steele): every product is of decays in (0, 1],
so nothing overflows, unlike a cumulative sum of log-decays divided out. The chunk's states start
from the previous chunk's last state. While training, each chunk runs under activation
checkpointing: the forward keeps the chunk's inputs and its starting state, the backward recomputes
one chunk's (B, K, E, N) tensors at a time. Everything runs in fp32. Under torch.compile the scan
stays eager (measured: compiling its unrolled chunks took minutes a sequence length on a CPU); the
projections, convolution and gating around it compile.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def scan_affine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan along dim 1 of h_t = a_t h_{t-1} + b_t from h = 0: a, b (B, K, ...) ->
    (prod_{s<=t} a_s, h_t), both (B, K, ...), in ceil(log2 K) doubling steps."""
    step, K = 1, a.size(1)
    while step < K:
        # compose each map with the one `step` earlier: (a, b) o (a', b') = (a a', a b' + b)
        b = torch.cat([b[:, :step], b[:, step:] + a[:, step:] * b[:, :-step]], dim=1)
        a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        step *= 2
    return a, b


def scan_chunk(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: x, dt (B, K, E); A (E, N); B, C (B, K, N); h0 (B, E, N) -> y (B, K, E), h_K (B, E, N)."""
    a = torch.exp(dt.unsqueeze(-1) * A)  # (B, K, E, N) decays
    b = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, K, E, N) inputs
    decay, h = scan_affine(a, b)
    h = h + decay * h0.unsqueeze(1)  # (B, K, E, N) states
    y = (h * C.unsqueeze(2)).sum(-1)  # (B, K, E)
    return y, h[:, -1].clone()  # a copy: a view would keep the chunk's every state alive


@torch.compiler.disable  # type: ignore[untyped-decorator]  # eager under torch.compile: its chunk loop would unroll into a graph per sequence length
def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   h0: torch.Tensor | None = None, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan over a sequence: x, dt (B, T, E); A (E, N); B, C (B, T, N); h0 (B, E, N)
    or None (zeros) -> y (B, T, E) (C h, without the D skip), the last state h_T (B, E, N), fp32.
    `chunk` tokens are scanned at a time; it changes memory and speed, not the result."""
    x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
    h = h0.float() if h0 is not None else x.new_zeros(x.size(0), x.size(2), A.size(1))
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, h))
    ys = []
    for start in range(0, x.size(1), chunk):
        part = slice(start, start + chunk)
        inputs = (x[:, part], dt[:, part], A, B[:, part], C[:, part], h)
        y, h = checkpoint(scan_chunk, *inputs, use_reentrant=False) if recompute else scan_chunk(*inputs)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def reference_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token (the tests' and the bench's reference): same in, same out."""
    h = h0.float() if h0 is not None else x.new_zeros(x.size(0), x.size(2), A.size(1))
    ys = []
    for t in range(x.size(1)):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h
