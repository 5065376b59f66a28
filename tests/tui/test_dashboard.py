"""The dashboard driven through a Pilot: live numbers, control keys, failure, quitting a launched run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from synthetic import T0, run_events, screen_text, write_events

from tabula.tui.app import DashboardApp
from tabula.tui.dialogs import ConfirmStop, QuitRun

pytestmark = pytest.mark.anyio


class FakeProcess:
    def __init__(self) -> None:
        self.code: int | None = None
        self.terminated = False

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.terminated = True


async def test_growing_events_file_updates_the_numbers(tmp_path):
    events = run_events(100)
    write_events(tmp_path, events[:5])
    now = [T0 + 10]
    app = DashboardApp(tmp_path, clock=lambda: now[0])
    async with app.run_test(size=(160, 48)) as pilot:
        text = screen_text(app)
        assert "step 20 / 200" in text and "running" in text
        write_events(tmp_path, events[5:], mode="a")
        now[0] = T0 + 51
        app.screen.poll()
        await pilot.pause()
        text = screen_text(app)
        assert "step 100 / 200" in text
        assert "50.0%" in text
        assert "tokens 1.56M / 3.12M" in text  # binary suffixes, as in specs
        assert "step-000100" in text  # last checkpoint
        assert "return parse(argv, step=100)" in text  # latest sample
        assert "stage 2/2: seq_len 256" in text  # the log pane
        assert "loss spike" in text
        now[0] = T0 + 200  # nothing new for a while
        app.screen.poll()
        await pilot.pause()
        assert "no new events for 2m30s" in screen_text(app)


@pytest.mark.parametrize("key, control_file", [("c", "checkpoint"), ("e", "eval")])
async def test_keys_write_control_requests(tmp_path, key, control_file):
    write_events(tmp_path, run_events(20))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 11)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(key)
        await pilot.pause()
        assert sorted(p.name for p in (tmp_path / "control").iterdir()) == [control_file]
        assert "requested" in screen_text(app)


async def test_stop_asks_first_then_writes_stop(tmp_path):
    write_events(tmp_path, run_events(20))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 11)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmStop)
        await pilot.press("n")
        await pilot.pause()
        assert not (tmp_path / "control" / "stop").exists()
        await pilot.press("s", "y")
        await pilot.pause()
        assert (tmp_path / "control" / "stop").exists()


async def test_failed_run_shows_its_error_and_refuses_requests(tmp_path):
    write_events(tmp_path, run_events(20, end="failed", error="RuntimeError: CUDA out of memory"))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 500)
    async with app.run_test(size=(80, 24)) as pilot:
        text = screen_text(app)
        assert "● failed" in text
        assert "error: RuntimeError: CUDA out of memory" in text
        await pilot.press("c", "s")
        await pilot.pause()
        assert not (tmp_path / "control").exists()
        assert not isinstance(app.screen, ConfirmStop)  # no question about a run that has ended


async def test_the_run_keys_dim_when_the_run_ends(tmp_path):
    events = run_events(20)
    write_events(tmp_path, events)
    app = DashboardApp(tmp_path, clock=lambda: T0 + 11)
    async with app.run_test(size=(160, 48)) as pilot:
        dashboard = app.screen
        assert [dashboard.check_action(a, ()) for a in ("stop", "checkpoint", "evaluate", "quit_dashboard")] == [True] * 4
        write_events(tmp_path, [{"kind": "end", "time": T0 + 12, "step": 20, "tokens": events[-1]["tokens"],
                                 "reason": "finished", "error": None}], mode="a")
        dashboard.poll()
        await pilot.pause()
        assert [dashboard.check_action(a, ()) for a in ("stop", "checkpoint", "evaluate")] == [None] * 3  # shown dimmed
        assert dashboard.check_action("quit_dashboard", ()) is True


async def test_crashed_training_process_shows_failed_with_its_output(tmp_path):
    write_events(tmp_path, run_events(10))
    (tmp_path / "output.log").write_text("Traceback (most recent call last):\nValueError: the data ran dry\n")
    process = FakeProcess()
    app = DashboardApp(tmp_path, clock=lambda: T0 + 6, process=process)
    async with app.run_test(size=(160, 48)) as pilot:
        assert "● running" in screen_text(app)
        process.code = 1
        app.screen.poll()
        await pilot.pause()
        text = screen_text(app)
        assert "● failed" in text and "exited with code 1" in text
        assert "ValueError: the data ran dry" in text


@pytest.mark.parametrize("answer, result, stop_file", [("l", "leave", False), ("s", "stop", True)])
async def test_quit_on_a_launched_run_asks_stop_or_leave(tmp_path, answer, result, stop_file):
    write_events(tmp_path, run_events(10))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 6, process=FakeProcess())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitRun)
        await pilot.press(answer)
        await pilot.pause()
    assert app.return_value == result
    assert (tmp_path / "control" / "stop").exists() == stop_file


@pytest.mark.parametrize("keys", [("s", "y"), ("q", "s")])
async def test_stop_before_the_first_event_ends_the_launched_process(tmp_path, keys):
    # the run folder does not exist yet (the runtime creates it, and refuses one that is not empty):
    # a control file cannot be written, so the process is asked to end; it was ignored before (q, then
    # stop, waited for the whole run)
    run_dir = tmp_path / "run"
    process = FakeProcess()
    app = DashboardApp(run_dir, clock=lambda: T0, process=process)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*keys)
        await pilot.pause()
        assert process.terminated and not run_dir.exists()
        if keys[0] == "s":
            process.code = -15  # killed while it prepared its data
            app.screen.poll()
            await pilot.pause()
            assert "● stopped" in screen_text(app) and "ended by SIGTERM" in screen_text(app)
    assert app.return_value == ("stop" if keys[0] == "q" else None)


async def test_quit_on_a_watched_run_just_quits(tmp_path):
    write_events(tmp_path, run_events(10))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 6)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value is None
    assert not (tmp_path / "control").exists()


def test_dashboard_imports_no_torch():
    code = ("import sys, tabula.tui.app, tabula.tui.launch, tabula.commands.watch; "
            "bad = [m for m in ('torch', 'deepspeed', 'aim', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_launched_run_shows_its_output_while_it_prepares(tmp_path):
    (tmp_path / "output.log").write_text("tokenizer: training on 4M characters\rreading stdlib: 2,000\n")
    app = DashboardApp(tmp_path, clock=lambda: T0, process=FakeProcess())
    async with app.run_test(size=(80, 24)):
        text = screen_text(app)
        assert "● preparing data" in text and "preparing data reading stdlib  2k" in text  # no total: no share
    (tmp_path / "output.log").write_text("loading the model\n")
    app = DashboardApp(tmp_path, clock=lambda: T0, process=FakeProcess())
    async with app.run_test(size=(80, 24)):
        assert "● waiting (loading the model)" in screen_text(app)  # any other line, as it is


async def test_data_preparation_fills_the_progress_bar(tmp_path):
    """Before its folder exists a new run can write no event: its output lines show the preparation's progress."""
    log = tmp_path / "run.output.log"
    log.write_text("reading stdlib (documents): 40 of 40 (100%)\ntokenizing (bytes of text): 1,310,720 of 5,242,880 (25%)\n")
    app = DashboardApp(tmp_path / "run", clock=lambda: T0, process=FakeProcess(), output_log=log)
    async with app.run_test(size=(80, 24)) as pilot:
        text = screen_text(app)
        assert "25.0%" in text and "preparing data tokenizing (bytes of text)  1.31M / 5.24M" in text
        with open(log, "a") as file:
            file.write("run folder: runs/tiny\n")  # prepared: the bar waits for the run's events
        app.clock = lambda: T0 + 2
        app.screen.clock = app.clock
        app.screen.poll()
        await pilot.pause()
        text = screen_text(app)
        assert "preparing data" not in text and "step 0 / -" in text and "● waiting (run folder: runs/tiny)" in text


def test_watch_refuses_without_a_terminal_and_names_the_record(tmp_path):
    write_events(tmp_path, run_events(10))
    result = subprocess.run([sys.executable, "-m", "tabula.cli", "watch", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr and "events.jsonl" in result.stderr


MALFORMED = [
    b'{"kind": "start", "time": 1, "step": 0, "tokens": 0, "run_name": 7, "world_size": "two", "stages": [3, {"index": 0}]}',
    b"not json",
    b"[1, 2]",
    b'{"kind": ["train"]}',
    b'{"kind": "train", "time": "yesterday", "step": "a", "tokens": null, "loss": "NaN", "lr": [1], "memory": 1.5}',
    b"\xff\xfe garbage",
    b'{"kind": "stage", "index": "x", "seq_len": "long", "mix": {"a": "half", "b": 1}}',
    b'{"kind": "checkpoint", "path": null, "best": true}',
    b'{"kind": "sample", "prompt": null, "text": 12}',
    b'{"kind": "log", "level": 5, "message": ["a"]}',
    b'{"kind": "end", "time": 4, "step": 5, "tokens": 100, "reason": "failed", "error": {"type": "OOM"}}',
]


async def test_malformed_events_never_crash_the_dashboard_and_are_reported(tmp_path):
    # another tool or version may write the run directory: wrong types read as absent
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(MALFORMED) + b"\n")
    app = DashboardApp(tmp_path, clock=lambda: 10.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "failed" in text and "{'type': 'OOM'}" in text
        assert "skipped 3 lines of events.jsonl that are not a JSON event" in text
        state = app.screen.state
        assert (state.run_name, state.world_size, state.stage_index, state.seq_len) == ("7", None, None, None)
        assert state.mix == {"b": 1.0} and state.stages == [{"index": 0}] and state.memory is None
        assert (state.step, state.tokens, state.sample_text) == (5, 100, "12")



async def test_impossible_numbers_read_as_unknown_not_inft_or_negative_memory(tmp_path):
    # Infinity and NaN are valid JSON to Python's reader; negative amounts come from a broken writer
    events = run_events(10)
    events[-1] = dict(events[-1], tokens_per_s=float("inf"), memory=-1024, step_time=-0.5, lr=float("nan"),
                      mfu=float("inf"), loss=float("inf"))
    events.append({"kind": "log", "time": float("inf"), "level": "warning", "message": "odd clock"})
    events.append({"kind": "log", "time": 1e300, "level": "warning", "message": "far future"})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = DashboardApp(tmp_path, clock=lambda: T0 + 6)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    shown = {label: re.search(rf"│ {label} +(\S+)", text).group(1) for label in ("tokens/s", "MFU", "memory", "lr", "step time", "loss")}
    assert shown == {"tokens/s": "-", "MFU": "-", "memory": "-", "lr": "-", "step time": "-", "loss": "inf"}  # a loss that blew up is news
    assert "infT" not in text and "-1.0 KiB" not in text and "-1024 B" not in text
    assert "odd clock" in text and "far future" in text  # odd time stamps: still a line each
    assert "elapsed -" in text  # a time stamp of 1e300 (inf is skipped): a clock gone wrong, not 3e292 days


async def test_the_header_shows_what_a_fine_tuning_method_trains(tmp_path):
    events = run_events(10)
    events[0] = {**events[0], "finetune": "lora", "trainable_parameters": 143_872}
    write_events(tmp_path, events)
    app = DashboardApp(tmp_path, clock=lambda: T0 + 10)
    async with app.run_test(size=(200, 48)):
        text = screen_text(app)
        assert "5.3M params  ·  lora: 144k trained" in text
        assert app.screen.state.finetune == "lora" and app.screen.state.trainable_parameters == 143_872
