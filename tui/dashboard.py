"""The dashboard screen: tails a run directory and shows it; keys send control requests.

It polls events.jsonl at `POLL_HZ` and folds in whatever arrived; it redraws the numbers with the
clock, once a second, and the charts every `CHART_INTERVAL_S`, and only what changed, so the cost
of watching does not grow with the run's step rate (bench/bench_tui.py measures it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tabula.schemas.rundir_protocol import OUTPUT_LOG, ControlRequestError, request

from .dialogs import LEAVE, STOP, ConfirmStop, QuitRun
from .events import EventsReader
from .state import RunState, stop_signal
from .widgets.event_log import EventLog
from .widgets.metric_chart import MetricChart
from .widgets.progress_panel import ProgressPanel
from .widgets.run_header import RunHeader
from .widgets.sample_view import SampleView
from .widgets.stats_panel import StatsPanel

POLL_HZ = 4
RUN_ACTIONS = ("stop", "checkpoint", "evaluate")  # keys that send the run a request
CHART_INTERVAL_S = 5.0  # plotting is the dearest part of a frame (tens of ms a chart); losses move slowly
CATCH_UP_S = 0.1  # reading spent a poll at most, so keys stay responsive while a long run is read


def output_log_path(run_dir: Path) -> Path:
    """Where a launched training's stdout and stderr go (tui/launch.py): RUN_DIR/output.log when
    the folder exists (a resume), else RUN_DIR.output.log beside it, since the runtime starts a new
    run only in an absent or empty folder."""
    run_dir = Path(run_dir)
    return run_dir / OUTPUT_LOG if run_dir.is_dir() else run_dir.with_name(run_dir.name + "." + OUTPUT_LOG)


class Process(Protocol):
    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...


class DashboardScreen(Screen[str | None]):
    """Everything about one run on one screen. Dismisses with `stop`, `leave` or None (see DashboardApp)."""

    DEFAULT_CSS = """
    DashboardScreen {
        layout: vertical;
    }
    DashboardScreen #middle {
        height: 1fr;
    }
    DashboardScreen #charts {
        width: 1fr;
    }
    DashboardScreen #small-charts {
        height: 1fr;
    }
    DashboardScreen #side {
        width: 52;
    }
    DashboardScreen.-narrow #charts, DashboardScreen.-short #charts {
        display: none;
    }
    DashboardScreen.-narrow #side, DashboardScreen.-short #side {
        width: 1fr;
        layout: horizontal;
    }
    DashboardScreen.-narrow StatsPanel, DashboardScreen.-short StatsPanel {
        width: 44;
    }
    DashboardScreen.-short #middle {
        height: 14;  /* the stats table: 12 rows and its border */
    }
    DashboardScreen.-short EventLog {
        height: 1fr;
        min-height: 3;
    }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("q", "quit_dashboard", "quit"),
        Binding("s", "stop", "stop + checkpoint"),
        Binding("c", "checkpoint", "checkpoint now"),
        Binding("e", "evaluate", "evaluate now"),
    ]

    def __init__(self, run_dir: str | Path, *, clock: Callable[[], float] = time.time,
                 process: Process | None = None, output_log: Path | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.output_log = Path(output_log) if output_log is not None else self.run_dir / OUTPUT_LOG
        self.clock = clock
        self.process = process
        self.reader = EventsReader(self.run_dir)
        self.state = RunState()
        self._last_second: int | None = None
        self._last_chart = float("-inf")
        self._exit_reported = False
        self._numbers_stale = self._charts_stale = False
        self._ended_shown = False
        self._problem_shown: str | None = None

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield ProgressPanel(id="progress")
        with Horizontal(id="middle"):
            with Vertical(id="charts"):
                yield MetricChart("loss (train, val) by tokens", id="loss-chart")
                with Horizontal(id="small-charts"):
                    yield MetricChart("learning rate", id="lr-chart")
                    yield MetricChart("tokens/s", id="speed-chart")
            with Vertical(id="side"):
                yield StatsPanel(id="stats")
                yield SampleView(id="sample")
        yield EventLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StatsPanel).show(self.state)
        self.query_one(SampleView).show(self.state)
        self.poll()
        self.set_interval(1 / POLL_HZ, self.poll)

    # ------------------------------------------------------------ reading

    def poll(self) -> None:
        """Read what the run appended and fold it in; redraw the numbers and the clock once a second
        and the charts every CHART_INTERVAL_S (all at once when the run ends)."""
        events: list[dict] = []
        bad_before = self.reader.bad_lines
        budget = time.perf_counter() + CATCH_UP_S  # attaching to a long run: catch up in slices
        while True:
            chunk = self.reader.read_new()
            for event in chunk:
                self.state.apply(event)
            events += chunk
            if not chunk or self.reader.caught_up or time.perf_counter() > budget:
                break
        now = self.clock()
        if self.reader.bad_lines > bad_before:  # say so once a poll, rather than show a quietly partial run
            skipped = self.reader.bad_lines - bad_before
            self.state.note(self.state.last_time or now, "warning",
                            f"skipped {skipped} line{'s' if skipped > 1 else ''} of {self.reader.path.name} that "
                            f"{'are' if skipped > 1 else 'is'} not a JSON event")
        problem = self.reader.problem != self._problem_shown  # events.jsonl became (or stopped being) unreadable
        if problem:
            self._problem_shown = self.state.events_problem = self.reader.problem
            if self.reader.problem:
                self.state.note(now, "error", f"{self.reader.problem}: no events can be read from it")
        exited = self._check_process(now)
        second = int(now)
        if self.process is not None and self.state.last_time is None and second != self._last_second:
            lines = _tail(self.output_log, 1)  # what the run prints while it prepares its data
            self.state.output_line(lines[-1] if lines else None)
        if events or exited or problem or self.reader.bad_lines > bad_before:
            self._numbers_stale = self._charts_stale = True
        ended = self.state.end_reason is not None
        if ended != self._ended_shown:  # the footer dims the run's keys
            self._ended_shown = ended
            self.refresh_bindings()
        numbers = self._numbers_stale and (second != self._last_second or ended or exited)
        if numbers:  # on the clock's tick, so that one frame a second carries numbers and clock
            self._numbers_stale = False
            self.query_one(StatsPanel).show(self.state)
            self.query_one(SampleView).show(self.state)
            self.query_one(EventLog).show(self.state)
        if numbers or second != self._last_second:
            self._last_second = second
            self.query_one(RunHeader).show(self.state, now)
            self.query_one(ProgressPanel).show(self.state, now)
        if self._charts_stale and (now - self._last_chart >= CHART_INTERVAL_S or ended):
            self._last_chart, self._charts_stale = now, False
            self._draw_charts()

    def _check_process(self, now: float) -> bool:
        if self.process is None or self._exit_reported:
            return False
        code = self.process.poll()
        self.state.alive = code is None
        if code is None:
            return False
        self._exit_reported = True
        for event in self.reader.read_new():
            self.state.apply(event)
        self.state.process_exited(code, now, str(self.output_log))
        if code != 0 and not stop_signal(code):
            for line in _tail(self.output_log, 8):
                self.state.note(now, "error", line)
        return True

    def _draw_charts(self) -> None:
        state = self.state
        self.query_one("#loss-chart", MetricChart).show(
            [("train", state.train_loss, "cyan"), ("val", state.val_loss_series, "orange")]
        )
        self.query_one("#lr-chart", MetricChart).show([("lr", state.lr_series, "green")])
        self.query_one("#speed-chart", MetricChart).show([("tokens/s", state.tokens_per_s_series, "magenta")])

    # ------------------------------------------------------------ keys

    @property
    def run_active(self) -> bool:
        return self.state.end_reason is None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The run's keys are shown dimmed, and do nothing, once the run has ended."""
        if action in RUN_ACTIONS and not self.run_active:
            return None
        return True

    def _send(self, name: str, what: str) -> bool:
        """Write the control request `name`; False (and said on screen) when it could not be."""
        if self.state.last_time is None:  # no run folder to write into yet (the runtime creates it)
            self.notify(f"The run has not started yet; nothing to {what}.", severity="warning")
            return False
        if not self.run_active:
            self.notify(f"The run has {self.state.end_reason}; nothing to {what}.", severity="warning")
            return False
        try:
            request(self.run_dir, name)
        except ControlRequestError as error:  # control/ is a file, the folder read-only: say so, go on
            self.notify(str(error), severity="error")
            self.state.note(self.clock(), "error", str(error))
            sent = False
        else:
            self.state.note(self.clock(), "info", f"{what} requested (at the run's next step)")
            sent = True
        self.query_one(EventLog).show(self.state)
        return sent

    def action_checkpoint(self) -> None:
        self._send("checkpoint", "checkpoint")

    def action_evaluate(self) -> None:
        self._send("eval", "evaluation")

    def _stop(self) -> None:
        """Stop the run with a checkpoint: a control request once the run writes its folder. Before
        its first event there may be no folder yet (and a file put there would make the runtime refuse
        it as not empty), so a run this dashboard launched is sent SIGTERM instead: while it prepares
        its data that ends it (nothing to checkpoint yet); once training it stops as `stop` would."""
        if self.state.last_time is None and self.process is not None and self.run_active:
            self.process.terminate()
            self.state.note(self.clock(), "info", "stop requested before the run's first step: its process was asked to end")
            self.query_one(EventLog).show(self.state)
            return
        if not self._send("stop", "stop with checkpoint") and self.process is not None and self.run_active:
            self.process.terminate()  # the run reads no requests; SIGTERM stops it with a checkpoint all the same
            self.state.note(self.clock(), "info", "its process was sent SIGTERM instead (it stops with a checkpoint)")
            self.query_one(EventLog).show(self.state)

    def action_stop(self) -> None:
        if not self.run_active:
            self._send("stop", "stop")
            return

        def answered(answer: str | None) -> None:
            if answer == STOP:
                self._stop()

        self.app.push_screen(ConfirmStop(), answered)

    def action_quit_dashboard(self) -> None:
        if self.process is None or not self.run_active:
            self.dismiss(None)
            return

        def answered(answer: str | None) -> None:
            if answer == STOP:
                self._stop()
                self.dismiss(STOP)
            elif answer == LEAVE:
                self.dismiss(LEAVE)

        self.app.push_screen(QuitRun(), answered)


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` non-empty lines of a text file (reads at most its last 16 KiB)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - 16384))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return []
    text = text.replace("\r", "\n")  # progress lines rewritten in place
    return [line for line in text.splitlines() if line.strip()][-lines:]
