"""Charts plot at most two points a column: a long run's series is thinned to its envelope."""

from __future__ import annotations

from tabula.tui.widgets.metric_chart import envelope


def test_envelope_keeps_spikes_and_order_within_two_points_a_column():
    xs = [float(i) for i in range(1000)]
    ys = [3.0] * 1000
    ys[537], ys[612] = 9.0, 0.5  # a loss spike and a dip
    out_x, out_y = envelope(xs, ys, 50)
    assert len(out_x) <= 100 and out_x == sorted(out_x)
    assert (537.0, 9.0) in zip(out_x, out_y) and (612.0, 0.5) in zip(out_x, out_y)
    assert out_x[0] == 0.0  # the start of the run is kept
    assert envelope(xs[:80], ys[:80], 50) == (xs[:80], ys[:80])  # few points: all of them
