"""Checkpoint faults met by the train loop: a disk that refuses a checkpoint (train.checkpoint.on_write_error)
and a checkpoint damaged on disk before the loop needs it."""

from __future__ import annotations

import pytest
from safetensors import SafetensorError

import tabula.runtime.checkpoint as checkpoint_module
from planted_nan import plant_nan
from runtime_helpers import one_thread_fixture, train_in, tiny_spec
from tabula.runtime.checkpoint import list_checkpoints, select_checkpoint
from tabula.runtime.engine import LocalEngine

pytestmark = pytest.mark.slow


one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(tiny_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


_run = train_in


def _disk_full_at(monkeypatch, step: int) -> None:
    """The disk fills up while the weights of checkpoint `step` are written (24 steps, one every 8)."""
    real = checkpoint_module.save_file

    def save_file(tensors, filename, metadata=None):
        if f".tmp-step-{step:06d}" in str(filename):
            with open(filename, "wb") as handle:
                handle.write(b"\0" * 1000)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)


def _names(folder):
    return [p.name for p in list_checkpoints(folder)]


def _leftovers(folder):
    return [p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_full_mid_run_continues_and_the_next_checkpoint_succeeds(prepared, tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, 16)
    outcome, events = _run(tiny_spec(), prepared, tmp_path / "run")
    assert outcome.reason == "finished" and outcome.step == 24
    errors = [e for e in events if e["kind"] == "log" and e["level"] == "error"]
    assert len(errors) == 1 and errors[0]["step"] == 16
    assert errors[0]["message"].startswith("checkpoint at step 16 was not written (the disk is full")
    assert "the previous checkpoint step-000008 is intact" in errors[0]["message"]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [8, 24]
    assert _names(tmp_path / "run")[-1] == "step-000024" and _leftovers(tmp_path / "run") == []


def test_disk_full_with_on_write_error_stop_ends_the_run_with_the_last_checkpoint(prepared, tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, 16)
    outcome, events = _run(tiny_spec(checkpoint={"every_tokens": "4k", "keep_last": 2, "on_write_error": "stop"}),
                           prepared, tmp_path / "run")
    assert outcome.reason == "failed" and outcome.step == 16
    assert "the disk is full" in outcome.error and "(train.checkpoint.on_write_error: stop)" in outcome.error
    assert outcome.checkpoint == tmp_path / "run" / "checkpoints" / "step-000008"
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "failed" and events[-1]["error"] == outcome.error
    assert not any(e["kind"] == "train" and e["step"] > 16 for e in events)
    assert _names(tmp_path / "run") == ["step-000008"] and _leftovers(tmp_path / "run") == []


def test_a_refused_final_checkpoint_fails_the_run(prepared, tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, 24)
    outcome, events = _run(tiny_spec(), prepared, tmp_path / "run")
    assert outcome.reason == "failed" and outcome.step == 24
    assert "checkpoint at step 24 was not written (the disk is full" in outcome.error
    assert outcome.error.endswith("the steps since the last checkpoint written are not saved")
    assert outcome.checkpoint == tmp_path / "run" / "checkpoints" / "step-000016"
    assert events[-1]["reason"] == "failed" and _leftovers(tmp_path / "run") == []


def test_rollback_passes_over_a_damaged_checkpoint(prepared, tmp_path, monkeypatch):
    """Step 16's weights are truncated on disk after they were written; a NaN at step 19 rolls back to
    step 8, the newest intact checkpoint, and says why 16 was skipped."""
    real_save = checkpoint_module.Checkpointer.save

    def save_then_damage(self, step, state, *rank_files):
        path = real_save(self, step, state, *rank_files)
        if step == 16 and not getattr(self, "damaged", False):
            self.damaged = True
            weights = path / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
        return path

    monkeypatch.setattr(checkpoint_module.Checkpointer, "save", save_then_damage)
    plant_nan(monkeypatch, LocalEngine, 19)
    outcome, events = _run(tiny_spec(on_nonfinite="rollback"), prepared, tmp_path / "run")
    assert outcome.reason == "finished" and outcome.step == 24
    warnings = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert any(w.startswith("skipped checkpoint step-000016: model.safetensors has 100 bytes") for w in warnings), warnings
    assert any("rolled back to checkpoints/step-000008 (step 8)" in w for w in warnings), warnings
    assert select_checkpoint(tmp_path / "run").skipped == ()  # training reached step 16 again and replaced it
