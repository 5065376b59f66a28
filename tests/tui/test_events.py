"""The events reader: incremental, partial lines held back, never re-reading the file."""

from __future__ import annotations

import json

from synthetic import run_events, write_events

from tabula.tui.events import EventsReader


def test_reads_only_new_complete_lines(tmp_path):
    events = run_events(20)
    path = write_events(tmp_path, events[:2])
    reader = EventsReader(tmp_path)
    assert [e["kind"] for e in reader.read_new()] == ["start", "train"]
    assert reader.read_new() == []
    line = json.dumps(events[2])
    with open(path, "a") as file:  # the runtime is mid-write: half a line
        file.write(line[:10])
    assert reader.read_new() == []
    with open(path, "a") as file:
        file.write(line[10:] + "\n")
    assert reader.read_new() == [events[2]]
    assert reader.offset == path.stat().st_size


def test_never_rereads_what_it_consumed(tmp_path, monkeypatch):
    path = write_events(tmp_path, run_events(200))
    reader = EventsReader(tmp_path)
    first = reader.read_new()
    assert len(first) > 40
    seeks = []
    real_open = open

    def spy_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        real_seek = handle.seek
        handle.seek = lambda offset, *rest: seeks.append(offset) or real_seek(offset, *rest)
        return handle

    monkeypatch.setattr("builtins.open", spy_open)
    write_events(tmp_path, [{"kind": "log", "time": 1.0, "step": 1, "tokens": 1, "level": "info", "message": "x"}], mode="a")
    size_before = reader.offset
    assert [e["kind"] for e in reader.read_new()] == ["log"]
    assert seeks == [size_before]  # it started at its offset, not at 0
    assert reader.offset == path.stat().st_size


def test_bounded_reads_catch_up_over_several_polls(tmp_path):
    write_events(tmp_path, run_events(200))
    reader = EventsReader(tmp_path, max_read_bytes=2048)
    total = []
    for _ in range(200):
        total += reader.read_new()
        if reader.caught_up:
            break
    assert total == run_events(200)


def test_missing_file_bad_lines_and_replaced_file(tmp_path):
    reader = EventsReader(tmp_path)
    assert reader.read_new() == []  # the run has not written yet
    path = tmp_path / "events.jsonl"
    path.write_text('not json\n[1, 2]\n{"kind": "log", "time": 1, "step": 0, "tokens": 0, "level": "info", "message": "a"}\n')
    assert len(reader.read_new()) == 1 and reader.bad_lines == 2
    path.write_text('{"kind": "start", "time": 1, "step": 0, "tokens": 0}\n')  # shorter: a new file
    assert [e["kind"] for e in reader.read_new()] == ["start"]
