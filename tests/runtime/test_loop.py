"""The train loop, in-process on the CPU: exact resume, non-finite policies, control requests, stages."""

from __future__ import annotations

import json

import pytest
import torch

from planted_nan import plant_nan
from runtime_helpers import one_thread_fixture, tiny_spec, tiny_spec_dict, train_in
from tabula.runtime.checkpoint import list_checkpoints, read_state
from tabula.runtime.engine import LocalEngine
from tabula.schemas.rundir_protocol import COMMON_FIELDS, EVENT_FIELDS

pytestmark = pytest.mark.slow


one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(tiny_spec(), cache_dir=tmp_path_factory.mktemp("cache"))


_run = train_in


def _losses(events):
    return {e["step"]: e["loss"] for e in events if e["kind"] == "train"}


def test_resume_is_bit_identical(prepared, tmp_path):
    spec = tiny_spec()
    whole, whole_events = _run(spec, prepared, tmp_path / "whole")
    assert whole.reason == "finished" and whole.step == 24
    first, _ = _run(spec, prepared, tmp_path / "split", max_steps=9)
    assert first.reason == "stopped" and first.checkpoint.name == "step-000009"
    second, events = _run(spec, prepared, tmp_path / "split", resume_from=first.checkpoint)
    assert second.reason == "finished"
    expected = _losses(whole_events)
    resumed = _losses(events)
    assert sorted(resumed) == list(range(1, 25))  # events.jsonl holds both sessions
    assert resumed == expected  # every step's loss to the last bit
    evals = [e["val_loss"] for e in events if e["kind"] == "eval"]
    assert evals == [e["val_loss"] for e in whole_events if e["kind"] == "eval"]


def test_a_stop_mid_interval_still_logs_its_steps(prepared, tmp_path):
    every_step = _losses(_run(tiny_spec(), prepared, tmp_path / "each", max_steps=7)[1])
    outcome, events = _run(tiny_spec(log={"every_steps": 5, "every_seconds": None}), prepared, tmp_path / "fives", max_steps=7)
    assert outcome.reason == "stopped"
    logged = _losses(events)
    assert sorted(logged) == [1, 5, 7]  # the first step; the last event covers steps 6 and 7, which a stop cut short
    assert logged[7] == pytest.approx((every_step[6] + every_step[7]) / 2, rel=1e-5)


def test_events_follow_the_contract(prepared, tmp_path):
    _, events = _run(tiny_spec(), prepared, tmp_path / "run")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["reason"] == "finished"
    for kind in ("train", "eval", "sample", "stage", "checkpoint"):
        assert kind in kinds
    for event in events:  # each kind with the fields the run-directory protocol promises readers
        assert set(COMMON_FIELDS) | set(EVENT_FIELDS[event["kind"]]) <= set(event), event
    train_event = next(e for e in events if e["kind"] == "train")
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu", "memory", "stage"} <= set(train_event)
    stage = next(e for e in events if e["kind"] == "stage")
    assert stage["index"] == 1 and stage["seq_len"] == 64 and stage["tokens"] == 8192
    assert events[0]["stages"][0] == {"index": 0, "until_tokens": 8192, "seq_len": 32, "mix": {"stdlib": 1.0}}
    losses = [e["loss"] for e in events if e["kind"] == "train"]
    assert losses[-1] < losses[0]


def test_nonfinite_skip(prepared, tmp_path, monkeypatch):
    plant_nan(monkeypatch, LocalEngine, 5)
    outcome, events = _run(tiny_spec(on_nonfinite="skip"), prepared, tmp_path / "run")
    assert outcome.reason == "finished"
    warnings = [e for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 1 and "non-finite loss at step 5" in warnings[0]["message"] and "skipped" in warnings[0]["message"]
    losses = _losses(events)
    assert losses[5] is None  # the skipped step's loss is not averaged into the record
    assert [e["step"] for e in events if e["kind"] == "train" and e["skipped"]] == [5]  # it is counted instead
    assert all(loss == loss for step, loss in losses.items() if step != 5)  # and no NaN leaked into the weights


def test_nonfinite_skip_interval_counts_what_it_skipped(prepared, tmp_path, monkeypatch):
    plant_nan(monkeypatch, LocalEngine, 4)
    every_step = _losses(_run(tiny_spec(), prepared, tmp_path / "each", max_steps=5)[1])
    plant_nan(monkeypatch, LocalEngine, 4)
    _, events = _run(tiny_spec(log={"every_steps": 5, "every_seconds": None}), prepared, tmp_path / "fives", max_steps=5)
    (interval,) = [e for e in events if e["kind"] == "train" and e["step"] == 5]
    assert interval["skipped"] == 1
    assert interval["loss"] == pytest.approx((every_step[2] + every_step[3] + every_step[5]) / 3, rel=1e-5)


def test_skipping_every_update_fails_the_run(prepared, tmp_path):
    """A learning rate of 1e6 with on_nonfinite: skip refused 63 of 64 updates and reported 'finished'."""
    spec = tiny_spec(on_nonfinite="skip", max_consecutive_skips=4, grad_clip=None,
                     optimizer={"kind": "adamw", "lr": 1.0e6}, schedule={"kind": "constant"})
    outcome, events = _run(spec, prepared, tmp_path / "run")
    assert outcome.reason == "failed" and outcome.step < 24
    assert "4 updates in a row were non-finite and skipped (train.max_consecutive_skips: 4)" in outcome.error
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "failed"
    skipped = [e["skipped"] for e in events if e["kind"] == "train"]
    assert sum(skipped) >= 4 and skipped[-4:] == [1, 1, 1, 1]  # every skip is in the record
    warnings = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 3 and "(3 in a row)" in warnings[-1]


def test_nonfinite_stop(prepared, tmp_path, monkeypatch):
    plant_nan(monkeypatch, LocalEngine, 11)
    outcome, events = _run(tiny_spec(on_nonfinite="stop"), prepared, tmp_path / "run")
    assert outcome.reason == "failed" and outcome.step == 11
    assert "non-finite loss at step 11" in outcome.error and "step-000008" in outcome.error
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "failed"
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step-000008"


def test_nonfinite_rollback(prepared, tmp_path, monkeypatch):
    plant_nan(monkeypatch, LocalEngine, 11)
    outcome, events = _run(tiny_spec(on_nonfinite="rollback"), prepared, tmp_path / "run")
    assert outcome.reason == "finished" and outcome.step == 24
    warning = next(e for e in events if e["kind"] == "log" and e["level"] == "warning")
    assert "rolled back to checkpoints/step-000008" in warning["message"]
    steps = [e["step"] for e in events if e["kind"] == "train"]
    assert steps.count(9) == 2  # steps 9-10 ran twice: once before the NaN, once after the rollback
    final = read_state(outcome.checkpoint)
    assert final["sampler"]["tokens"] > final["tokens"]  # the data window before the NaN was skipped


def test_control_requests(prepared, tmp_path):
    from tabula.schemas.rundir_protocol import request

    folder = tmp_path / "run"

    class Dropper:
        def __call__(self, event):
            if event["kind"] == "train" and event["step"] == 2:
                request(folder, "eval")
                request(folder, "checkpoint")
            if event["kind"] == "train" and event["step"] == 3:
                request(folder, "stop")

    outcome, events = _run(tiny_spec(), prepared, folder, console=Dropper())
    assert outcome.reason == "stopped" and outcome.step == 3
    assert [e["step"] for e in events if e["kind"] == "eval"] == [2]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [2, 3]
    assert not list((folder / "control").iterdir())  # requests are deleted once acted upon


def test_a_request_left_by_an_earlier_session_is_ignored(prepared, tmp_path):
    """A stop sent as a run ended (or crashed) would stop its resumed run at the first step."""
    from tabula.schemas.rundir_protocol import request

    folder = tmp_path / "run"
    first, _ = _run(tiny_spec(), prepared, folder, max_steps=3)
    request(folder, "stop")
    outcome, events = _run(tiny_spec(), prepared, folder, max_steps=2, resume_from=first.checkpoint)
    assert (outcome.reason, outcome.step) == ("stopped", 5)  # by --max-steps, not by the old request
    warnings = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert any("ignored the stop request" in w for w in warnings), warnings
    assert not list((folder / "control").iterdir())


def test_damaged_control_requests_are_ignored_and_the_run_goes_on(prepared, tmp_path):
    """`mkdir control/eval` crashed the run and lost the steps since its checkpoint."""
    folder = tmp_path / "run"

    class Breaker:
        def __call__(self, event):
            if event["kind"] == "train" and event["step"] == 2:
                (folder / "control" / "eval").mkdir()
                (folder / "control" / "stop").mkdir()

    outcome, events = _run(tiny_spec(), prepared, folder, console=Breaker())
    assert outcome.reason == "finished" and outcome.step == 24
    warnings = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert sorted(w.split(":")[0] for w in warnings) == ["ignored control/eval", "ignored control/stop"]  # once each


def test_a_file_where_control_should_be_leaves_the_run_without_requests(prepared, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "control").write_text("")
    outcome, events = _run(tiny_spec(), prepared, folder, max_steps=3)
    assert (outcome.reason, outcome.step) == ("stopped", 3)
    (warning,) = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert "cannot hold control requests (it is not a folder): the run goes on without them" in warning


def test_train_events_come_with_the_first_step_and_the_clock(prepared, tmp_path):
    """Numbers within seconds: the first step of a session is logged, and (one process) a step that ends
    more than log.every_seconds after the last record is logged too."""
    _, events = _run(tiny_spec(log={"every_steps": 100, "every_seconds": None}), prepared, tmp_path / "steps", max_steps=6)
    assert [e["step"] for e in events if e["kind"] == "train"] == [1, 6]  # the first, and the stop's
    _, events = _run(tiny_spec(log={"every_steps": 100, "every_seconds": 1e-6}), prepared, tmp_path / "clock", max_steps=6)
    assert [e["step"] for e in events if e["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_state(prepared, tmp_path):
    outcome, _ = _run(tiny_spec(), prepared, tmp_path / "run")
    state = read_state(outcome.checkpoint)
    assert state["step"] == 24 and state["tokens"] == 24 * 512
    assert state["sampler"]["tokens"] == 24 * 512
    assert state["best_val_loss"] is not None
    json.dumps(state)


def test_out_of_memory_names_the_micro_batch(prepared, tmp_path, monkeypatch):
    def oom(self, *args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LocalEngine, "forward_backward", oom)
    outcome, events = _run(tiny_spec(), prepared, tmp_path / "run")
    assert outcome.reason == "failed"
    assert "micro-batch 16 x seq_len 32" in outcome.error and "tabula plan" in outcome.error
    assert events[-1]["kind"] == "end" and events[-1]["error"] == outcome.error


def test_the_cpu_peak_is_measured_before_the_tracker_thread_starts(prepared, tmp_path, monkeypatch):
    """The tracker's thread holds the GIL for milliseconds while it opens the Aim repository, and a peak
    timed in Python between matmuls then reads low (MFU read 85-96% where 60% was true)."""
    import tabula.runtime.loop as loop

    order = []
    monkeypatch.setattr(loop, "peak_flops", lambda device, precision: (order.append("peak"), (1e12, "test"))[1])
    monkeypatch.setattr(loop, "make_tracker", lambda *args, **kwargs: order.append("tracker"))
    _run(tiny_spec(), prepared, tmp_path / "run", max_steps=1)
    assert order == ["peak", "tracker"]


def test_an_online_mixture_reports_its_weights_and_resumes_bit_identically(prepared, tmp_path):
    raw = tiny_spec_dict()
    raw["data"]["mixture"] = {"kind": "online", "every_tokens": "2k", "reference_loss": {"stdlib": 1.0}}
    from tabula.schemas.spec import Spec

    spec = Spec.model_validate(raw)
    whole, whole_events = _run(spec, prepared, tmp_path / "whole", max_steps=12)
    first, _ = _run(spec, prepared, tmp_path / "split", max_steps=6)
    _, events = _run(spec, prepared, tmp_path / "split", resume_from=first.checkpoint, max_steps=6)
    assert _losses(events) == _losses(whole_events)
    mixture = [e for e in whole_events if e["kind"] == "mixture"]
    assert [e["tokens"] for e in mixture] == [0, 2048, 4096, 6144]  # the start, then each update (after its step)
    assert mixture[-1]["weights"] == {"stdlib": 1.0} and mixture[-1]["tokens_seen"] == {"stdlib": 6144}
    assert mixture[-1]["losses"]["stdlib"] > 1.0 and mixture[0]["losses"] == {}
    resumed = [e for e in events if e["kind"] == "mixture"][-1]
    assert {k: v for k, v in resumed.items() if k != "time"} == {k: v for k, v in mixture[-1].items() if k != "time"}
