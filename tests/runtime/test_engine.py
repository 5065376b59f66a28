"""The local engine: precisions, the refused non-finite update, gradient accumulation."""

import pytest
import torch
from torch import nn

from tabula.runtime.engine import Engine, LocalEngine


class TinyLM(nn.Module):
    """Just enough of the Transformer's call signature: (input_ids, targets, document_ids=) -> (logits, loss)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids, targets=None, *, document_ids=None):
        logits = self.head(self.embed(input_ids))
        loss = nn.functional.cross_entropy(logits.float().view(-1, 16), targets.view(-1))
        return logits, loss


def _engine(precision="fp32", clip=1.0):
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return LocalEngine(model, optimizer, device=torch.device("cpu"), precision=precision, grad_clip=clip)


def _batch(n=4):
    ids = torch.randint(0, 16, (n, 6), generator=torch.Generator().manual_seed(1))
    return ids, ids.roll(-1, dims=1)


def test_local_engine_keeps_the_contract():
    assert isinstance(_engine(), Engine)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains(precision):
    engine = _engine(precision)
    ids, targets = _batch()
    first = engine.forward_backward(ids, targets, None, 1)
    assert not first.requires_grad
    for _ in range(5):
        engine.forward_backward(ids, targets, None, 1)
        norm = engine.step(0.05)
        assert torch.isfinite(norm)
    assert engine.forward_backward(ids, targets, None, 1) < first
    assert engine.model.head.weight.dtype == torch.float32  # weights stay fp32 under autocast


def test_accumulation_equals_one_big_batch():
    ids, targets = _batch(4)
    whole, split = _engine(), _engine()
    whole.forward_backward(ids, targets, None, 1)
    split.forward_backward(ids[:2], targets[:2], None, 2)
    split.forward_backward(ids[2:], targets[2:], None, 2)
    for a, b in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_non_finite_gradient_is_never_applied():
    engine = _engine()
    ids, targets = _batch()
    engine.forward_backward(ids, targets, None, 1)
    engine.model.head.weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in engine.model.parameters()]
    norm = engine.step(0.1)
    assert not torch.isfinite(norm)
    for a, b in zip(before, engine.model.parameters()):
        assert torch.equal(a, b)
        assert b.grad is None  # and the gradients are cleared for the next step


def test_clipping_reports_the_norm_before_clipping():
    engine = _engine(clip=1e-3)
    ids, targets = _batch()
    engine.forward_backward(ids, targets, None, 1)
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in engine.model.parameters()]))
    assert engine.step(0.1) == pytest.approx(expected.item(), rel=1e-5)
