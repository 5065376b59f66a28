"""Looking inside a trained model on one text, on request only (never during training):
- attention weights of every layer and head, recomputed during one inspection forward from the queries and
  keys each attention module computes from its own weights (MHA, GQA, MQA, sliding windows and MLA all call
  `compiler.blocks.attention.attend`, which is wrapped for that forward alone): softmax(q k^T / sqrt(d))
  under the same mask;
- the loss of each token given the ones before it (which tokens surprise the model);
- a logit lens: each layer's residual stream through the final norm and the output head, its top guesses
  for the next token.
Heatmaps are written as PNG (matplotlib, one file a layer, one panel a head)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch


@dataclass(frozen=True)
class Inspection:
    tokens: list[str]  # the text's tokens as strings (the start token first)
    attention: list[torch.Tensor]  # per layer: (heads, T, keys) weights, rows summing to 1
    token_loss: list[float | None]  # per position: -log p(token | before); None for the first
    lens: list[list[list[tuple[str, float]]]]  # per layer, per position: top (token, probability) guesses of the next


@contextlib.contextmanager
def recording_attention() -> Iterator[list[torch.Tensor]]:
    """While inside, every call of `attend` (from any attention kind) also appends its weights (B, nh, T, keys)."""
    from tabula.compiler.blocks import attention as attention_module
    from tabula.compiler.blocks import mla as mla_module

    original = attention_module.attend
    recorded: list[torch.Tensor] = []

    def attend(q, k, v, mask, dropout):
        recorded.append(attention_weights(q, k, mask))
        return original(q, k, v, mask, dropout)

    for module in (attention_module, mla_module):
        setattr(module, "attend", attend)
    try:
        yield recorded
    finally:
        for module in (attention_module, mla_module):
            setattr(module, "attend", original)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) over (B, nh, T, d) queries and (B, n_kv, keys, d) keys (shared in groups),
    causal when `mask` is None, else where the boolean mask allows. (B, nh, T, keys)."""
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, keys)
    T, keys = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(T, keys, dtype=torch.bool, device=q.device).tril(keys - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def inspect_text(model, tokenizer, text: str, *, start_id: int, top_k: int = 5) -> Inspection:
    """Attention, per-token loss and the logit lens of `model` (a tabula Transformer) on `text`."""
    model = model.eval()
    ids = [start_id] + tokenizer.encode(text, add_special_tokens=False).ids
    ids = ids[: model.max_seq_len - model.n_virtual]
    inputs = torch.tensor([ids])
    hidden: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: hidden.append(out)) for block in model.blocks]
    try:
        with recording_attention() as recorded:
            logits = model(inputs)  # (1, T, V)
    finally:
        for hook in hooks:
            hook.remove()
    logprobs = torch.log_softmax(logits.float(), dim=-1)[0]
    token_loss: list[float | None] = [None] + [-float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]
    lens = []
    for layer_out in hidden:
        probs = torch.softmax(model.lm_head(model.norm(layer_out[:, -len(ids):])).float(), dim=-1)[0]  # (T, V)
        top = probs.topk(top_k, dim=-1)
        lens.append([[(tokenizer.decode([int(t)]), float(p)) for p, t in zip(row_p, row_t)]
                     for row_p, row_t in zip(top.values, top.indices)])
    return Inspection(tokens=[tokenizer.decode([i]) for i in ids], attention=[w[0] for w in recorded],
                      token_loss=token_loss, lens=lens)


def write_heatmaps(inspection: Inspection, folder: str | Path, *, title: str = "") -> list[Path]:
    """One PNG a layer (`attention-layer-NN.png`), a panel a head, tokens on both axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = [repr(token)[1:-1][:12] for token in inspection.tokens]
    paths = []
    for layer, weights in enumerate(inspection.attention):
        heads = weights.size(0)
        columns = min(4, heads)
        rows = math.ceil(heads / columns)
        figure = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.6), dpi=80, layout="constrained")
        for head in range(heads):
            axes = figure.add_subplot(rows, columns, head + 1)
            data = weights[head].numpy()
            axes.imshow(data[:, -len(labels):] if data.shape[1] >= len(labels) else data, cmap="viridis", vmin=0, vmax=1)
            axes.set_title(f"head {head}", fontsize=9)
            if len(labels) <= 40:
                axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
                axes.set_yticks(range(len(labels)), labels, fontsize=6)
            axes.set_xlabel("key (attended to)", fontsize=7)
            axes.set_ylabel("query", fontsize=7)
        figure.suptitle(f"{title} attention, layer {layer}".strip())
        path = folder / f"attention-layer-{layer:02d}.png"
        figure.savefig(path)
        paths.append(path)
    return paths


def write_token_loss(inspection: Inspection, path: str | Path, *, title: str = "") -> Path:
    """A bar for each token's loss (nats), the tokens along the x axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    losses = [loss if loss is not None else 0.0 for loss in inspection.token_loss]
    figure = Figure(figsize=(max(6, 0.3 * len(losses)), 4), dpi=90)
    axes = figure.add_subplot()
    axes.bar(range(len(losses)), losses, color="tab:red")
    axes.set_xticks(range(len(losses)), [repr(t)[1:-1][:12] for t in inspection.tokens], rotation=90, fontsize=7)
    axes.set_ylabel("loss (nats): -log p(token | before)")
    axes.set_title(f"{title} per-token loss".strip())
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
