"""Optimizers by kind: parameter groups without weight decay for norms, biases and embeddings."""

import pytest
import torch
from torch import nn

from tabula.runtime.optimizers import OPTIMIZERS, LionOptimizer, build_optimizer, param_groups
from tabula.schemas.train import SGD, Adafactor, AdamW, Lion


class Tiny(nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.proj = nn.Linear(8, 8, bias=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 32, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.norm(self.proj(self.embed(x))))


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(name for name, p in model.named_parameters() if id(p) in ids)


@pytest.mark.parametrize("tied", [True, False])
def test_groups_keep_decay_off_norms_biases_and_embeddings(tied):
    model = Tiny(tied)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(model, no_decay) == ["embed.weight", "norm.bias", "norm.weight", "proj.bias"]
    assert _names(model, decay) == (["proj.weight"] if tied else ["head.weight", "proj.weight"])
    total = sum(len(g["params"]) for g in (decay, no_decay))
    assert total == len(list(model.parameters()))  # every parameter once, a tied one too


@pytest.mark.parametrize("spec", [
    AdamW(kind="adamw", lr=1e-2, weight_decay=0.1),
    Lion(kind="lion", lr=1e-3, weight_decay=0.1),
    Adafactor(kind="adafactor", lr=1e-2, weight_decay=0.1),
    SGD(kind="sgd", lr=1e-1, weight_decay=0.1),
])
def test_each_optimizer_lowers_the_loss(spec):
    torch.manual_seed(0)
    model = Tiny(tied=True)
    optimizer = build_optimizer(spec, model, torch.device("cpu"))
    x = torch.randint(0, 32, (16, 4))

    def loss():
        return nn.functional.cross_entropy(model(x).view(-1, 32), x.view(-1))

    first = loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first - 0.1


def test_no_decay_group_really_gets_no_decay():
    torch.manual_seed(0)
    model = Tiny(tied=False)
    optimizer = build_optimizer(SGD(kind="sgd", lr=0.5, momentum=0.0, weight_decay=0.5), model, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    optimizer.step()
    assert torch.equal(model.norm.weight, before["norm.weight"])
    assert torch.equal(model.embed.weight, before["embed.weight"])
    assert not torch.equal(model.proj.weight, before["proj.weight"])


def test_lion_update_is_a_sign_step():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = LionOptimizer([p], lr=0.1, betas=(0.9, 0.99))
    p.grad = torch.tensor([3.0, -0.001, 0.0])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([0.9, -1.9, 0.5]))


def test_every_schema_kind_is_registered():
    assert set(OPTIMIZERS) == {"adamw", "lion", "adafactor", "sgd"}


def test_adamw_runs_multi_tensor_on_a_cpu():
    optimizer = build_optimizer(AdamW(kind="adamw", lr=1e-3), Tiny(tied=True), torch.device("cpu"))
    assert optimizer.defaults["foreach"] and not optimizer.defaults["fused"]


@pytest.mark.gpu
def test_adamw_is_fused_on_cuda():
    optimizer = build_optimizer(AdamW(kind="adamw", lr=1e-3), Tiny(tied=True).cuda(), torch.device("cuda"))
    assert optimizer.defaults["fused"]
    optimizer.step()  # fused kernels accept the groups as built (no gradients yet: a no-op step)
