"""Events no run wrote: whatever a file holds, the dashboard reads what it can and never crashes."""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import T0, run_events, screen_text, write_events

from tabula.schemas.rundir_protocol import COMMON_FIELDS, EVENT_FIELDS, EVENT_KINDS
from tabula.tui.app import DashboardApp
from tabula.tui.events import EventsReader
from tabula.tui.state import RunState
from tabula.tui.widgets.progress_panel import progress_texts
from tabula.tui.widgets.run_header import header_text
from tabula.tui.widgets.stats_panel import stats_rows

FIELDS = sorted({name for fields in EVENT_FIELDS.values() for name in fields} | set(COMMON_FIELDS))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(10**400), 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
EVENTS = st.builds(lambda fields, kind: {**fields, "kind": kind},
                   st.dictionaries(st.sampled_from([*FIELDS, "other"]), VALUES, max_size=8),
                   st.one_of(st.sampled_from(EVENT_KINDS), VALUES))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, max_size=5), st.floats(allow_nan=False, allow_infinity=False),
       st.one_of(st.none(), st.text(max_size=40)))
def test_any_event_dicts_fold_and_render(events, now, output):
    """Missing fields, wrong types, numbers past any float: folded, and every panel's text drawn from them."""
    state = RunState()
    state.output_line(output)
    for event in events:
        state.apply(event)
    state.status(now), state.fraction_done(), state.fraction_prepared(), state.elapsed(now), state.eta(now)
    state.perplexity, state.stage_label
    for label, value in stats_rows(state):
        assert isinstance(value, str)
    progress_texts(state, now)
    header_text(state, now)
    fraction = state.fraction_done()
    assert fraction is None or 0.0 <= fraction <= 1.0


def test_huge_numbers_read_as_unknown():
    state = RunState()
    state.apply({"kind": "train", "time": 10**400, "step": 10**30, "tokens": -(10**400), "loss": 10**400, "skipped": 10**400})
    assert (state.last_time, state.step, state.tokens, state.loss, state.skipped) == (None, 0, 0, None, None)


def _reader_events(tmp_path, data: bytes, **kwargs):
    (tmp_path / "events.jsonl").write_bytes(data)
    reader = EventsReader(tmp_path, **kwargs)
    events = []
    for _ in range(1000):
        events += reader.read_new()
        if reader.caught_up:
            break
    return events, reader


def test_binary_deep_and_overlong_lines_are_skipped(tmp_path):
    good = json.dumps(run_events(5)[1]).encode()
    data = b"\n".join([
        os.urandom(3000).replace(b"\n", b""),  # binary garbage
        b"[" * 5000,  # deeper than the JSON parser recurses
        b'{"kind": "log", "message": "' + b"x" * 20_000 + b'"}',  # over max_line_bytes, read in 1 kB slices
        good, b"",
    ])
    events, reader = _reader_events(tmp_path, data, max_read_bytes=1024, max_line_bytes=8192)
    assert events == [json.loads(good)] and reader.bad_lines == 3
    assert reader._partial == b""  # nothing of the long line kept in memory


def test_an_events_file_that_becomes_a_folder_is_reported_not_raised(tmp_path):
    write_events(tmp_path, run_events(10))
    reader = EventsReader(tmp_path)
    assert reader.read_new() and reader.problem is None
    os.unlink(tmp_path / "events.jsonl")
    (tmp_path / "events.jsonl").mkdir()
    assert reader.read_new() == [] and reader.problem.endswith("events.jsonl is a folder, not a file of events")
    os.mkfifo(tmp_path / "events.jsonl" / "x")
    os.rename(tmp_path / "events.jsonl", tmp_path / "old")
    os.rename(tmp_path / "old" / "x", tmp_path / "events.jsonl")
    assert reader.read_new() == [] and "is a pipe" in reader.problem  # and it did not block



@pytest.mark.anyio
async def test_the_dashboard_says_why_it_reads_no_events(tmp_path):
    (tmp_path / "events.jsonl").mkdir()
    app = DashboardApp(tmp_path, clock=lambda: T0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        logged = app.screen.state.log[-1]
    assert "● unreadable (" in text and "events.jsonl is a folder, not a file of events)" in text
    assert logged.level == "error" and logged.text == f"{tmp_path / 'events.jsonl'} is a folder, not a file of events: no events can be read from it"


@pytest.mark.anyio
async def test_garbage_lines_are_a_warning_in_the_log_pane(tmp_path):
    events = run_events(20)
    lines = [json.dumps(e).encode() for e in events]
    lines.insert(3, b"\x00\x01\x02 binary")
    lines.insert(5, b"[" * 50_000)
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    app = DashboardApp(tmp_path, clock=lambda: T0 + 11)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    assert "skipped 2 lines of events.jsonl that are not a JSON event" in text
    assert "step 20 / 200" in text


@pytest.mark.anyio
async def test_a_request_the_run_cannot_receive_is_an_error_line_not_a_traceback(tmp_path):
    write_events(tmp_path, run_events(20))
    (tmp_path / "control").write_text("")  # a file where control/ should be
    app = DashboardApp(tmp_path, clock=lambda: T0 + 11)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("c")
        await pilot.pause()
        text = screen_text(app)
        logged = app.screen.state.log[-1]
    assert "cannot ask the run" in text  # on the log pane (and in a notification)
    assert logged.level == "error" and logged.text.endswith("to checkpoint: " + str(tmp_path / "control") +
                                                           " is not a folder, so the run reads no requests")
    assert (tmp_path / "control").is_file()


def test_skipped_updates_are_counted_on_the_stats_panel():
    state = RunState()
    for event in run_events(20):
        state.apply({name: value for name, value in event.items() if name != "skipped"})
    assert dict(stats_rows(state))["skipped"] == "-"  # an older run's events say nothing of skips
    state.apply(run_events(25)[-1])
    assert dict(stats_rows(state))["skipped"] == "0"
    state.apply({"kind": "train", "time": T0 + 11, "step": 21, "tokens": 1, "loss": None, "skipped": 1})
    state.apply({"kind": "train", "time": T0 + 12, "step": 30, "tokens": 2, "loss": 2.0, "skipped": 2})
    assert dict(stats_rows(state))["skipped"] == "3 of 30 steps"
    assert state.loss == 2.0 and not math.isnan(state.loss_ema)
