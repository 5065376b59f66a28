"""The mixture of experts: routing (top-k weights, every token to exactly k experts, capacity),
grouped computation equal to a per-token reference, losses reaching the training loss, and
balancing (aux loss or DeepSeek-V3's bias) moving a skewed router's load toward uniform."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from compiler_specs import tiny_spec

from tabula.compiler import build_model
from tabula.compiler.blocks.moe import MoEMLP
from tabula.compiler.blocks.init import WeightInit
from tabula.compiler.routing import routing_step
from tabula.schemas.init import GPT2Init
from tabula.schemas.model import MoEMLP as MoESpec

D = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads and lose much to OpenMP spin-waits on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def moe(**fields) -> MoEMLP:
    spec = MoESpec.model_validate({"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 16} | fields)
    module = MoEMLP(spec, D)
    module.init_weights(WeightInit(GPT2Init(), seed=3, n_layers=2))
    return module


def reference(module: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: what the grouped computation must equal."""
    _, _, ids, weights = module.route(x)
    out = torch.zeros_like(x)
    for t in range(x.size(0)):
        for slot in range(ids.size(1)):
            e = int(ids[t, slot])
            gate, up = F.linear(x[t], module.gate_up[e]).chunk(2)
            out[t] += weights[t, slot] * F.linear(F.silu(gate) * up, module.down[e])
    return out + (module.shared(x) if module.shared is not None else 0)


@pytest.mark.parametrize("fields", [{}, {"router": "sigmoid", "n_shared": 1, "balance": "bias", "scale": 2.0}, {"normalize": False, "top_k": 3}])
def test_every_token_reaches_exactly_k_experts_and_the_grouped_compute_is_the_per_token_one(fields):
    module = moe(**fields).eval()
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(0))
    logits, scores, ids, weights = module.route(x)
    k = module.spec.top_k
    assert ids.shape == (24, k) and all(len(set(row)) == k for row in ids.tolist())  # k distinct experts a token
    assert torch.equal(ids.sort(dim=1).values, scores.topk(k, dim=1).indices.sort(dim=1).values)  # zero bias: the top scores
    if module.spec.normalize:
        torch.testing.assert_close(weights.sum(dim=1), torch.full((24,), module.spec.scale))
    else:
        torch.testing.assert_close(weights, scores.gather(1, ids))
    torch.testing.assert_close(module(x[None])[0], reference(module, x), rtol=1e-5, atol=1e-6)


def test_a_capacity_drops_only_what_overflows_an_expert():
    module = moe(capacity_factor=0.5).eval()
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.router.zero_()
        module.router[0] += 1.0  # every token prefers expert 0: it overflows
    dropless = moe().eval()
    dropless.load_state_dict(module.state_dict())
    capped, full = module(x[None])[0], dropless(x[None])[0]
    capacity = int(0.5 * 32 * 2 / 4)  # 8 assignments an expert
    _, _, ids, _ = module.route(x)
    assert torch.bincount(ids.reshape(-1), minlength=4).max() > capacity
    assert not torch.allclose(capped, full)


def test_the_balancing_and_z_losses_join_the_training_loss_only():
    spec = tiny_spec(block={"mlp": {"kind": "moe", "n_experts": 4, "top_k": 2, "hidden": 16, "aux_loss_weight": 0.5, "z_loss_weight": 0.1}})
    model = build_model(spec, device="cpu")
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    logits, loss = model(ids, ids)
    aux = sum(block.mlp.aux_loss for block in model.blocks)
    ce = F.cross_entropy(logits.view(-1, 97), ids.view(-1))
    torch.testing.assert_close(loss, ce + aux)
    assert aux > 0.5 * 2 * 0.9  # near n_layers x weight x 1 (uniform), and the z-loss on top
    loss.backward()
    assert model.blocks[0].mlp.router.grad.abs().sum() > 0  # the router learns from them
    model.eval()
    torch.testing.assert_close(model(ids, ids)[1], ce)


def skewed(balance: str, **fields) -> tuple[MoEMLP, torch.Tensor]:
    """A router that sends most tokens to expert 0, over inputs with a shared direction."""
    module = moe(balance=balance, **fields)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(2)) + 0.3
    with torch.no_grad():
        module.router[0] = 0.1  # the inputs' positive mean makes expert 0 score highest for most tokens
    return module, x


def imbalance(module: MoEMLP, x: torch.Tensor) -> float:
    with torch.no_grad():
        _, _, ids, _ = module.route(x)
    share = torch.bincount(ids.reshape(-1), minlength=4).float() / ids.numel()
    return float(share.max() * 4)


def test_the_auxiliary_loss_moves_a_skewed_router_toward_uniform_load():
    module, x = skewed("aux_loss", aux_loss_weight=1.0)
    before = imbalance(module, x)
    optimizer = torch.optim.SGD([module.router], lr=0.1)
    for _ in range(30):
        module(x[None])
        module.aux_loss.backward()  # the balancing loss alone
        optimizer.step()
        optimizer.zero_grad()
    assert before > 1.8 and imbalance(module, x) < 0.75 * before


def test_the_bias_moves_a_skewed_router_toward_uniform_load_without_gradients():
    module, x = skewed("bias", router="sigmoid", bias_rate=0.02)
    before = imbalance(module, x)
    for _ in range(40):
        with torch.no_grad():
            module(x[None])
        stats = routing_step(module)
    assert stats is not None and stats.load.shape == (1, 4)
    assert module.expert_bias[0] < 0 and before > 1.8 and imbalance(module, x) < 0.75 * before
    assert module.aux_loss is not None and float(module.aux_loss) == 0.0  # no auxiliary loss: the bias balances


def test_aim_records_the_routing_event(monkeypatch):
    """The tracker's record of a routing event: the balancing loss, the imbalance, each layer's busiest
    share, and each expert's share while (layers x experts) is small."""
    import sys
    import types

    from tabula.runtime.tracking import AimTracker

    monkeypatch.setitem(sys.modules, "aim", types.SimpleNamespace(Text=str))  # _record imports aim; only Text is used

    class Run:
        def __init__(self):
            self.tracked = []

        def track(self, value, *, name, step, context):
            self.tracked.append((name, value, context.get("moe_layer"), context.get("expert")))

    run = Run()
    AimTracker._record(run, {"kind": "routing", "step": 3, "tokens": 10, "balance_loss": 1.1, "imbalance": 1.4,
                             "load": [[0.5, 0.25, 0.25, 0.0]]})
    names = [name for name, *_ in run.tracked]
    assert names[:3] == ["balance_loss", "expert_imbalance", "busiest_expert_share"] and names.count("expert_load") == 4
    assert ("expert_load", 0.5, 0, 0) in run.tracked
