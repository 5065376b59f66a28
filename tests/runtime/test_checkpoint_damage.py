"""Damaged checkpoints: every kind of damage is found, named, and passed over for the newest intact one."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from tabula.runtime.checkpoint import (
    Checkpointer,
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    select_checkpoint,
)
from tabula.runtime.engine import LocalEngine
from tabula.runtime.integrity import CHECKSUMS_FILE, check_checkpoint


def _engine(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return LocalEngine(model, optimizer, device=torch.device("cpu"), precision="fp32", grad_clip=1.0)


def _train_a_step(engine):
    loss = engine.model(torch.randn(3, 8)).square().mean()
    loss.backward()
    engine.step(0.1)


@pytest.fixture
def run(tmp_path):
    """A run folder with checkpoints at steps 1 and 2 (step 2 is the one the tests damage)."""
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)
    for step in (1, 2):
        _train_a_step(engine)
        checkpointer.save(step, {"step": step, "tokens": step * 10})
    return tmp_path


def _newest(run):
    return run / "checkpoints" / "step-000002"


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _member_data(path):
    """The offset of the first byte of the first tensor stored in a torch.save zip file."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    return info.header_offset + 30 + name_length + extra_length


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


def _selected(run, expected_reason):
    selection = select_checkpoint(run)
    assert selection.checkpoint == run / "checkpoints" / "step-000001"
    assert [s.path.name for s in selection.skipped] == ["step-000002"]
    assert expected_reason in selection.skipped[0].reason, selection.skipped[0].reason
    assert selection.skipped[0].message.startswith("skipped checkpoint step-000002: ")
    return selection


def test_an_intact_checkpoint_is_selected_with_nothing_skipped(run):
    selection = select_checkpoint(run)
    assert selection.checkpoint == _newest(run) and selection.skipped == ()
    listed = json.loads((_newest(run) / CHECKSUMS_FILE).read_text())["files"]
    assert set(listed) == {"model.safetensors", "optimizer.pt", "rng-rank0.json", "state.json"}


def test_resume_skips_truncated_weights(run):
    weights = _newest(run) / "model.safetensors"
    _truncate(weights, weights.stat().st_size // 2)
    _selected(run, "model.safetensors has")


def test_resume_skips_zero_length_weights(run):
    (_newest(run) / "model.safetensors").write_bytes(b"")
    _selected(run, "model.safetensors has 0 bytes")


def test_resume_skips_a_flipped_weights_header(run):
    _flip(_newest(run) / "model.safetensors", 12)  # inside the JSON header
    _selected(run, "model.safetensors does not match its sha256 checksum")


def test_resume_detects_flipped_bytes_by_checksum(run):
    """The damage that used to resume silently with a jump in the loss: one byte of a weight."""
    weights = _newest(run) / "model.safetensors"
    _flip(weights, weights.stat().st_size - 3)
    _selected(run, "model.safetensors does not match its sha256 checksum")


def test_resume_skips_truncated_optimizer_state(run):
    optimizer = _newest(run) / "optimizer.pt"
    _truncate(optimizer, 100)
    _selected(run, "optimizer.pt has 100 bytes")


def test_resume_skips_a_missing_weights_file(run):
    (_newest(run) / "model.safetensors").unlink()
    _selected(run, "model.safetensors is missing")


def test_resume_skips_damaged_rng_state(run):
    (_newest(run) / "rng-rank0.json").write_text('{"python": [3, [1, 2')
    _selected(run, "rng-rank0.json")


def test_resume_skips_a_damaged_state_file(run):
    (_newest(run) / "state.json").write_text("\x00\x00\x00")
    _selected(run, "state.json is damaged")


def test_resume_skips_a_state_file_of_another_step(run):
    (_newest(run) / "state.json").write_text('{"step": 7}')
    _selected(run, "state.json is damaged (it does not record step 2)")


def test_resume_skips_a_damaged_checksums_file(run):
    (_newest(run) / CHECKSUMS_FILE).write_text("{")
    _selected(run, "checksums.json is damaged")


def test_a_damaged_checkpoint_restores_nothing_but_the_intact_one_restores_exactly(run):
    _truncate(_newest(run) / "model.safetensors", 50)
    engine = _engine(seed=5)
    state = restore_checkpoint(engine, select_checkpoint(run).checkpoint)
    assert state["step"] == 1


def test_no_intact_checkpoint_is_a_checkpoint_error_naming_each(run):
    (run / "checkpoints" / "step-000001" / "optimizer.pt").write_bytes(b"")
    (_newest(run) / "model.safetensors").unlink()
    selection = select_checkpoint(run)
    assert selection.checkpoint is None and len(selection.skipped) == 2
    with pytest.raises(CheckpointError, match="no intact checkpoint") as raised:
        selection.required(run / "checkpoints")
    assert "step-000002: model.safetensors is missing" in str(raised.value)
    assert "step-000001: optimizer.pt has 0 bytes" in str(raised.value)


def test_up_to_passes_over_a_resumed_runs_abandoned_future(run):
    selection = select_checkpoint(run, up_to=1)
    assert selection.checkpoint.name == "step-000001" and selection.skipped == ()


def test_checksums_cover_every_file_below_the_folder(tmp_path):
    """DeepSpeed writes its shards into a subfolder: they are listed and checked too."""
    engine = _engine()
    real_save = engine.save

    def save_with_shards(folder):
        real_save(folder)
        (folder / "deepspeed" / "state").mkdir(parents=True)
        torch.save({"shard": torch.arange(100.0)}, folder / "deepspeed" / "state" / "rank1_optim_states.pt")

    engine.save = save_with_shards
    checkpointer = Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)
    path = checkpointer.save(1, {"step": 1})
    assert "deepspeed/state/rank1_optim_states.pt" in json.loads((path / CHECKSUMS_FILE).read_text())["files"]
    shard = path / "deepspeed" / "state" / "rank1_optim_states.pt"
    _flip(shard, shard.stat().st_size // 2)
    assert "deepspeed/state/rank1_optim_states.pt does not match" in check_checkpoint(path)


def test_files_added_after_the_write_are_not_checked(run):
    """A resume on another layout writes the universal folder or optimizer.pt into the checkpoint later."""
    (_newest(run) / "deepspeed" / "universal").mkdir(parents=True)
    (_newest(run) / "deepspeed" / "universal" / "extra.pt").write_bytes(b"not listed")
    assert check_checkpoint(_newest(run)) is None


# ---------------------------------------------------------------- checkpoints written before checksums


def test_old_checkpoint_without_checksums_still_resumes(run, caplog):
    for path in list_checkpoints(run):
        (path / CHECKSUMS_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="tabula.runtime.integrity"):
        selection = select_checkpoint(run)
    assert selection.checkpoint == _newest(run) and selection.skipped == ()
    assert "no checksums.json (written by an older tabula)" in caplog.text
    assert restore_checkpoint(_engine(seed=3), selection.checkpoint)["step"] == 2


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda c: _truncate(c / "model.safetensors", 300), "model.safetensors"),
        (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors is truncated"),
        (lambda c: _flip(c / "model.safetensors", 12), "model.safetensors has a damaged header"),
        (lambda c: _truncate(c / "optimizer.pt", 1000), "optimizer.pt is damaged"),
        (lambda c: _flip(c / "optimizer.pt", _member_data(c / "optimizer.pt")), "optimizer.pt is damaged (its member"),
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: (c / "rng-rank0.json").write_text("{"), "rng-rank0.json is damaged"),
    ],
    ids=["truncated-weights", "empty-weights", "flipped-header", "truncated-optimizer", "flipped-optimizer",
         "missing-optimizer", "damaged-rng"],
)
def test_old_checkpoints_are_checked_by_their_structure(run, damage, reason):
    for path in list_checkpoints(run):
        (path / CHECKSUMS_FILE).unlink()
    damage(_newest(run))
    _selected(run, reason)


# ---------------------------------------------------------------- tabula.load_model's choice


def test_load_model_passes_over_damaged_weights_with_a_warning(run, caplog):
    (_newest(run) / "model.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="tabula.runtime.checkpoint"):
        assert find_checkpoint(run) == run / "checkpoints" / "step-000001"
    assert "skipped checkpoint step-000002: model.safetensors has 0 bytes" in caplog.text


def test_load_model_reads_weights_whose_optimizer_state_is_damaged(run):
    (_newest(run) / "optimizer.pt").write_bytes(b"")  # load_model never reads it
    assert find_checkpoint(run) == _newest(run)


def test_load_model_refuses_a_damaged_checkpoint_folder_by_name(run):
    _flip(_newest(run) / "model.safetensors", 40)
    with pytest.raises(CheckpointError, match="step-000002 is damaged: model.safetensors does not match"):
        find_checkpoint(_newest(run))


def test_a_file_that_cannot_be_read_back_is_damage(run, monkeypatch):
    import tabula.runtime.integrity as integrity

    def unreadable(path):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(integrity, "digest", unreadable)
    selection = select_checkpoint(run)
    assert selection.checkpoint is None
    assert selection.skipped[0].reason.endswith("cannot be read (Input/output error)")


def test_a_checksums_file_naming_a_path_outside_the_checkpoint_is_damage(run):
    path = _newest(run) / CHECKSUMS_FILE
    recorded = json.loads(path.read_text())
    recorded["files"]["../../outside"] = {"size": 1, "sha256": "0"}
    path.write_text(json.dumps(recorded))
    _selected(run, "checksums.json is damaged (it names '../../outside', outside the checkpoint)")


def test_a_folder_where_the_weights_should_be_is_damage(run):
    (_newest(run) / "model.safetensors").unlink()
    (_newest(run) / "model.safetensors").mkdir()
    _selected(run, "model.safetensors is not a file")
