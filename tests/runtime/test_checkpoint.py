"""Checkpoints: complete or absent, pruned by keep_last / keep_best, weights and RNG restored exactly."""

import errno
import random

import numpy as np
import pytest
import torch
from torch import nn

from tabula.runtime.checkpoint import (
    Checkpointer,
    CheckpointError,
    capture_rng,
    list_checkpoints,
    read_state,
    read_weights,
    restore_checkpoint,
    restore_rng,
    save_weights,
)
from tabula.runtime.engine import LocalEngine


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 4)
        self.head = nn.Linear(4, 16, bias=False)
        self.head.weight = self.embed.weight


def _engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return LocalEngine(model, optimizer, device=torch.device("cpu"), precision="fp32", grad_clip=1.0)


def _train_a_step(engine):
    loss = engine.model(torch.randn(3, 4)).square().mean()
    loss.backward()
    engine.step(0.1)


def test_tied_weights_are_stored_once_and_restored_as_one(tmp_path):
    model = Tied()
    save_weights(model.state_dict(), tmp_path / "w.safetensors")
    weights = read_weights(tmp_path / "w.safetensors")
    assert set(weights) == {"embed.weight", "head.weight"}
    assert weights["head.weight"] is weights["embed.weight"]
    fresh = Tied()
    fresh.load_state_dict(weights)
    assert torch.equal(fresh.head.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight


def test_rng_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_and_restore_continue_identically(tmp_path):
    engine = _engine()
    _train_a_step(engine)
    checkpointer = Checkpointer(tmp_path, engine, keep_last=2, keep_best=False)
    path = checkpointer.save(1, {"step": 1})
    torch.manual_seed(7)
    _train_a_step(engine)
    after = [p.detach().clone() for p in engine.model.parameters()]

    other = _engine()
    state = restore_checkpoint(other, path)
    assert state["step"] == 1
    torch.manual_seed(7)
    _train_a_step(other)
    for a, b in zip(after, other.model.parameters()):
        assert torch.equal(a, b)  # bit-identical: weights, AdamW moments and step all restored


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)
    checkpointer.save(1, {"step": 1})

    def crash(folder):
        (folder / "optimizer.pt").write_bytes(b"half")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(engine, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(2, {"step": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert list((tmp_path / "checkpoints").glob(".tmp-*"))  # the half-written folder is not a checkpoint
    Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)  # the next start clears it
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_disk_full_is_reported_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=1, keep_best=False)
    checkpointer.save(1, {"step": 1})

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "save", full)
    with pytest.raises(CheckpointError, match="disk is full.*step-000001 is intact"):
        checkpointer.save(2, {"step": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert read_state(list_checkpoints(tmp_path)[0])["step"] == 1
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_and_keep_best(tmp_path):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=2, keep_best=True)
    for step, val_loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.2)]:
        checkpointer.save(step, {"step": step, "val_loss": val_loss})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000004", "step-000005"]
    assert checkpointer.best().name == "step-000002"


def test_keep_last_without_best(tmp_path):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=1, keep_best=False)
    for step, val_loss in [(1, 1.0), (2, 5.0)]:
        checkpointer.save(step, {"step": step, "val_loss": val_loss})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
