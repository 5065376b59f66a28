"""Snapshots of the dashboard at fixed terminal sizes, from fixed events and a fixed clock.

Update after an intended change: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest
from synthetic import T0, run_events, write_events

from tabula.tui.app import DashboardApp


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_running(snap_compare, tmp_path, size):
    write_events(tmp_path, run_events(120))
    assert snap_compare(DashboardApp(tmp_path, clock=lambda: T0 + 62), terminal_size=size)


def test_failed_80x24(snap_compare, tmp_path):
    write_events(tmp_path, run_events(60, end="failed", error="RuntimeError: CUDA out of memory (tried 2.0 GiB)"))
    assert snap_compare(DashboardApp(tmp_path, clock=lambda: T0 + 900), terminal_size=(80, 24))


def test_finished_160x48(snap_compare, tmp_path):
    write_events(tmp_path, run_events(200, end="finished"))
    assert snap_compare(DashboardApp(tmp_path, clock=lambda: T0 + 900), terminal_size=(160, 48))


def test_preparing_80x24(snap_compare, tmp_path):
    """A launched run still preparing its data: the bar shows how far (no run folder, no events yet)."""

    class Preparing:
        def poll(self):
            return None

        def terminate(self):
            pass

    log = tmp_path / "run.output.log"
    log.write_text("tokenizing (bytes of text): 3,932,160 of 5,242,880 (75%)\n")
    app = DashboardApp(tmp_path / "run", clock=lambda: T0, process=Preparing(), output_log=log)
    assert snap_compare(app, terminal_size=(80, 24))
