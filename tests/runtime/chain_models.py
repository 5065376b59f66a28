"""A tiny trained model without the data pipeline, for inference tests: a d_model-64, 2-layer transformer
over a 64-token vocabulary trained in a plain loop (60 steps, a few seconds) on a fixed sparse Markov chain, so that
its held-out perplexity (~2.7, near the chain's own) is far below the vocabulary's 64 and a quantization's
damage would show."""

from __future__ import annotations

import torch

VOCAB = 64
SEQ_LEN = 32


def markov_tokens(n_rows: int, seed: int) -> torch.Tensor:
    """(n_rows, SEQ_LEN + 1) token ids from a fixed chain: each token has 3 successors (weights 6:3:1)."""
    chain = torch.Generator().manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, 3), generator=chain)
    weights = torch.tensor([0.6, 0.3, 0.1])
    draw = torch.Generator().manual_seed(seed)
    rows = torch.empty(n_rows, SEQ_LEN + 1, dtype=torch.long)
    rows[:, 0] = torch.randint(0, VOCAB, (n_rows,), generator=draw)
    for t in range(1, SEQ_LEN + 1):
        pick = torch.multinomial(weights, n_rows, replacement=True, generator=draw)
        rows[:, t] = successors[rows[:, t - 1], pick]
    return rows


def markov_batches(n_rows: int, seed: int, batch_size: int = 16) -> list:
    from tabula.runtime.data.sampler import Batch

    rows = markov_tokens(n_rows, seed)
    return [Batch(input_ids=chunk[:, :-1], targets=chunk[:, 1:], document_ids=None) for chunk in rows.split(batch_size)]


def tiny_model_spec(**model):
    from tabula.schemas.model import Model

    fields = {"vocab_size": VOCAB, "d_model": 64, "n_layers": 2, "max_seq_len": 64,
              "position": {"kind": "rope", "theta": 10000},
              "block": {"norm": {"kind": "rmsnorm"}, "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2},
                        "mlp": {"kind": "swiglu", "hidden": 128}},
              "tie_embeddings": True}
    fields.update(model)
    return Model.model_validate(fields)


_TRAINED: dict[str, object] = {}


def train_tiny(model_spec=None, steps: int = 60, seed: int = 0):
    """A Transformer of `model_spec` (default tiny_model_spec()) trained `steps` AdamW steps on the chain,
    in eval mode: a copy of the one trained once per test session for these arguments."""
    import copy

    model_spec = model_spec or tiny_model_spec()
    key = f"{model_spec.model_dump_json()}|{steps}|{seed}"
    if key not in _TRAINED:
        _TRAINED[key] = _train(model_spec, steps, seed)
    return copy.deepcopy(_TRAINED[key])


def draft_model_spec():
    """A smaller model of the same vocabulary: a draft for tiny_model_spec()'s."""
    return tiny_model_spec(d_model=32, n_layers=1, block={"norm": {"kind": "rmsnorm"}, "attention": {"kind": "gqa", "n_heads": 2, "n_kv_heads": 1},
                                                          "mlp": {"kind": "swiglu", "hidden": 64}})


def _train(model_spec, steps: int, seed: int):
    from tabula.compiler.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(model_spec, VOCAB).materialize("cpu", seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rows = markov_tokens(steps * 16, seed=1)
    for batch in rows.split(16):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
