"""A checkpoint the disk refuses: one typed error whatever the writing library raised, its temporary
folder removed, the previous checkpoint intact and still the one a resume picks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from torch import nn

import tabula.runtime.checkpoint as checkpoint_module
from tabula.runtime.checkpoint import (
    Checkpointer,
    CheckpointWriteError,
    list_checkpoints,
    read_state,
    remove_leftovers,
    select_checkpoint,
)
from tabula.runtime.engine import LocalEngine


def _engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return LocalEngine(model, optimizer, device=torch.device("cpu"), precision="fp32", grad_clip=1.0)


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def _assert_previous_kept(run: Path) -> None:
    assert [p.name for p in list_checkpoints(run)] == ["step-000001"]
    assert _leftovers(run) == []  # the half-written folder is gone: it no longer keeps the disk full
    selection = select_checkpoint(run)
    assert selection.checkpoint.name == "step-000001" and selection.skipped == ()
    assert read_state(selection.checkpoint)["step"] == 1


@pytest.fixture
def saved(tmp_path):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)
    checkpointer.save(1, {"step": 1})
    return tmp_path, engine, checkpointer


def test_disk_full_checkpoint_keeps_previous_and_removes_temporary(saved, monkeypatch):
    """safetensors' own error, raised half-way through the weights, as a full disk makes it."""
    run, _, checkpointer = saved

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # what got written before the disk filled up
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(CheckpointWriteError) as raised:
        checkpointer.save(2, {"step": 2})
    error = raised.value
    assert error.disk_full and error.recoverable and error.path == run / "checkpoints" / "step-000002"
    assert error.kept == run / "checkpoints" / "step-000001"
    assert str(error).startswith("checkpoint at step 2 was not written (the disk is full: ")
    assert "the previous checkpoint step-000001 is intact; free space on that disk or lower train.checkpoint.keep_last" in str(error)
    _assert_previous_kept(run)


def test_enospc_from_the_os_is_a_full_disk(saved, monkeypatch):
    run, engine, checkpointer = saved

    def full(folder):
        (folder / "optimizer.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(engine, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"\(the disk is full: \d+ MiB free\)") as raised:
        checkpointer.save(2, {"step": 2})
    assert raised.value.disk_full
    _assert_previous_kept(run)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, the device every write to fails with ENOSPC")
def test_torch_saves_short_write_on_a_full_disk_is_a_write_error(saved, monkeypatch):
    """The failure the issue met: torch.save's "unexpected pos 201728 vs 201616" (a RuntimeError naming no
    cause) when the disk fills. Real: optimizer.pt is a link to /dev/full, so torch's own write fails."""
    run, engine, checkpointer = saved
    real_save = engine.save

    def onto_a_full_disk(folder):
        os.symlink("/dev/full", folder / "optimizer.pt")
        real_save(folder)

    monkeypatch.setattr(engine, "save", onto_a_full_disk)
    monkeypatch.setattr(checkpoint_module, "free_bytes", lambda folder: 0)  # what the disk says when it is full
    with pytest.raises(CheckpointWriteError) as raised:
        checkpointer.save(2, {"step": 2})
    assert raised.value.disk_full
    cause = raised.value.__cause__  # torch's words depend on where the write stopped
    assert isinstance(cause, RuntimeError) and any(w in f"{cause} {cause.__context__}" for w in ("unexpected pos", "iostream error"))
    _assert_previous_kept(run)
    assert Path("/dev/full").is_char_device()


def test_another_write_error_is_reported_with_its_text_and_not_as_a_full_disk(saved, monkeypatch):
    run, engine, checkpointer = saved

    def failing(folder):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(engine, "save", failing)
    with pytest.raises(CheckpointWriteError, match=r"\(the file system refused a write \(torch: PytorchStreamWriter failed writing file data/3: "
                       r"file write failed\)\); the previous checkpoint step-000001 is intact$") as raised:
        checkpointer.save(2, {"step": 2})
    assert not raised.value.disk_full
    _assert_previous_kept(run)


def test_a_refused_rename_keeps_the_previous_checkpoint(saved, monkeypatch):
    run, _, checkpointer = saved
    monkeypatch.setattr(checkpoint_module, "fsync_tree", lambda folder: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(CheckpointWriteError, match=r"OSError: \[Errno 5\] Input/output error"):
        checkpointer.save(2, {"step": 2})
    _assert_previous_kept(run)


def test_out_of_memory_while_saving_is_not_a_write_error(saved, monkeypatch):
    _, engine, checkpointer = saved
    monkeypatch.setattr(engine, "save", lambda folder: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        checkpointer.save(2, {"step": 2})


def test_the_first_checkpoint_refused_says_none_survives(tmp_path, monkeypatch):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=3, keep_best=False)
    monkeypatch.setattr(engine, "save", lambda folder: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointWriteError, match="no earlier checkpoint exists") as raised:
        checkpointer.save(1, {"step": 1})
    assert raised.value.kept is None and _leftovers(tmp_path) == []


def test_resume_cleans_leftover_temporary_folders(saved):
    run, _, _ = saved
    checkpoints = run / "checkpoints"
    (checkpoints / ".tmp-step-000002").mkdir()
    (checkpoints / ".tmp-step-000002" / "optimizer.pt").write_bytes(b"\0" * 1000)
    (checkpoints / ".trash-step-000000").mkdir()
    (checkpoints / "step-000001" / ".tmp-optimizer.pt").write_bytes(b"half")  # a local resume of a DeepSpeed run
    (checkpoints / "step-000001" / "deepspeed").mkdir()
    (checkpoints / "step-000001" / "deepspeed" / ".tmp-universal").mkdir()  # a resume on another layout
    removed = remove_leftovers(run)
    assert len(removed) == 4
    assert _leftovers(run) == []
    assert sorted(p.name for p in (checkpoints / "step-000001").iterdir()) == [
        "checksums.json", "deepspeed", "model.safetensors", "optimizer.pt", "rng-rank0.json", "state.json"]
    assert list((checkpoints / "step-000001" / "deepspeed").iterdir()) == []
    assert select_checkpoint(run).checkpoint.name == "step-000001"


def test_pruning_after_resuming_an_older_checkpoint_keeps_the_one_just_written(tmp_path):
    """Resumed from step 1 while a (damaged or abandoned) step 3 exists: writing step 2 with keep_last 1 must
    not delete step 2 in favour of step 3."""
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=1, keep_best=False)
    checkpointer.save(3, {"step": 3})
    checkpointer.save(2, {"step": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    checkpointer.save(3, {"step": 3})  # training reaches step 3 again: replaced, and 2 pruned
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]


def test_a_damaged_state_file_does_not_break_keep_best(tmp_path):
    engine = _engine()
    checkpointer = Checkpointer(tmp_path, engine, keep_last=1, keep_best=True)
    checkpointer.save(1, {"step": 1, "val_loss": 1.0})
    (tmp_path / "checkpoints" / "step-000001" / "state.json").write_text("{")
    checkpointer.save(2, {"step": 2, "val_loss": 2.0})
    assert checkpointer.best().name == "step-000002"


def test_a_run_folder_deleted_under_a_live_run_is_refused_not_recreated(saved):
    """Someone removed the run folder while it trained: the next checkpoint is a write error (the run then
    fails at its end, saying the steps are not saved), never a checkpoints/ folder alone in a ghost run."""
    import shutil

    run, _, checkpointer = saved
    shutil.rmtree(run)
    with pytest.raises(CheckpointWriteError, match="No such file or directory"):
        checkpointer.save(2, {"step": 2})
    assert not run.exists()
