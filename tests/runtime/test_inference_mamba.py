"""Generation through Mamba layers' recurrent state: a hybrid of attention and Mamba layers decodes one
token a step with the logits of a full recompute, rows of different lengths (padded) in one batch."""

from __future__ import annotations

import copy

import pytest
import torch

from tabula.compiler import build_model
from tabula.runtime.inference import Decoder, RollbackError, greedy_ids
from tabula.runtime.inference.reference import recompute_greedy
from tabula.schemas.model import MambaMixer
from tabula.schemas.spec import Spec

MAMBA = {"kind": "mamba", "mixer": {"d_state": 8, "d_conv": 4, "chunk": 4}}


BASE = {
    "name": "tiny",
    "model": {"vocab_size": 97, "d_model": 32, "n_layers": 2, "max_seq_len": 32,
              "block": {"attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2}, "mlp": {"kind": "swiglu", "hidden": 64}}},
    "data": {"tokenizer": {"kind": "file", "path": "tokenizer.json"}, "sources": {"text": {"kind": "python_stdlib"}},
             "curriculum": [{"seq_len": 8, "mix": {"text": 1.0}}]},
    "train": {"batch_tokens": 64, "optimizer": {"kind": "adamw", "lr": 1e-3}, "budget": {"tokens": 1024}},
}


def hybrid(**model):
    """Layers 0 and 2 Mamba (layer 2 with Jamba's MLP), layer 1 attention, learned positions."""
    raw = copy.deepcopy(BASE)
    layers = [{"start": 0, "stop": 1, "block": MAMBA}, {"start": 2, "block": MAMBA | {"mlp": {"kind": "swiglu", "hidden": 64}}}]
    raw["model"].update({"n_layers": 3, "max_seq_len": 48, "position": {"kind": "learned"}, "layers": layers} | model)
    spec = Spec.model_validate(raw)
    model = build_model(spec, device="cpu")
    with torch.no_grad():  # a large init: logits far from uniform, so a wrong state shows
        for name, param in model.named_parameters():
            if param.ndim == 2 and "A_log" not in name:
                param.mul_(8)
    return model.eval()


def test_cached_decoding_matches_recompute_for_a_hybrid_with_rows_of_different_lengths():
    model = hybrid()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (11, 5)]  # the second row is padded
    new = torch.randint(0, 97, (2, 7), generator=g)
    decoder = Decoder(model)
    cache = decoder.new_cache(2)
    with torch.no_grad():
        logits = [decoder.prefill(cache, prompts)]
        logits += [decoder.step(cache, new[:, t]) for t in range(6)]
        for row, prompt in enumerate(prompts):
            ids = torch.tensor(prompt + new[row, :6].tolist())[None]
            full = model(ids)[0, len(prompt) - 1 :]  # (7, vocab): after the prompt, then after each new token
            cached = torch.stack([step[row] for step in logits])
            torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    # a Mamba layer's state is the same size at any length: what the plan's state_bytes says, per row
    mamba, attention = cache.states[0], cache.states[1]
    assert mamba.bytes_per_token() == 0 < attention.bytes_per_token()
    assert mamba.nbytes() == 2 * MambaMixer(d_state=8, d_conv=4).state_bytes(32)
    with pytest.raises(RollbackError):
        cache.rollback(1)


def test_greedy_generation_of_a_mamba_model_is_the_recompute_one():
    model = hybrid(position={"kind": "none"}, layers=[{"start": 0, "block": MAMBA}])
    prompt = list(range(3, 12))
    cached = greedy_ids(model, prompt, 10)
    assert cached == recompute_greedy(model, torch.tensor([prompt]), 10)[0, len(prompt):].tolist()
