"""RunState: what the events mean (status, progress, smoothing, bounded series)."""

from __future__ import annotations

import math

from synthetic import BATCH_TOKENS, T0, TOTAL_STEPS, run_events

from tabula.tui.state import RunState, Series


def folded(events) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state


def test_progress_eta_and_stage():
    state = folded(run_events(100))
    assert state.step == 100 and state.tokens == 100 * BATCH_TOKENS
    assert state.fraction_done() == 100 / TOTAL_STEPS
    assert state.elapsed(T0 + 50) == 50
    assert state.eta(T0 + 50) == 50  # half the budget in 50 s
    assert (state.stage_index, state.seq_len) == (1, 256)
    assert state.last_checkpoint == "checkpoints/step-000100" == state.best_checkpoint
    assert state.sample_text.startswith("main(argv)")


def test_loss_is_smoothed_and_perplexity_follows_the_smoothed_loss():
    state = folded(run_events(10))
    first, second = run_events(10)[1]["loss"], run_events(10)[2]["loss"]
    assert state.loss == second
    assert math.isclose(state.loss_ema, 0.9 * first + 0.1 * second)
    assert math.isclose(state.perplexity, math.exp(state.loss_ema))


def test_status_running_stale_and_ended():
    state = folded(run_events(20))
    assert state.status(T0 + 12) == ("running", "")
    status, detail = state.status(T0 + 10 + 95)
    assert status == "stale" and detail == "no new events for 1m35s"
    assert state.status(T0 + 10 + 50)[0] == "running"  # quiet, not yet stale
    state.alive = True  # the launcher knows the process still runs: a slow step, not a dead run
    assert state.status(T0 + 10 + 95) == ("running", "no new events for 1m35s")
    failed = folded(run_events(20, end="failed", error="CUDA out of memory"))
    assert failed.status(T0 + 10_000) == ("failed", "CUDA out of memory")
    assert failed.log[-1].level == "error" and "CUDA out of memory" in failed.log[-1].text
    assert folded([]).status(T0)[0] == "waiting"


def test_process_exit_without_end_event_is_a_failure():
    state = folded(run_events(10))
    state.process_exited(1, T0 + 6, "runs/x/output.log")
    assert state.status(T0 + 7) == ("failed", "training process exited with code 1 (see runs/x/output.log)")


def test_series_stays_bounded_and_spans_the_whole_run():
    series = Series(capacity=64)
    for x in range(10_000):
        series.add(x, float(x))
    assert len(series) < 64
    assert series.xs[0] == 0 and series.xs[-1] > 9000
    series.add(10_001, float("nan"))
    assert all(math.isfinite(y) for y in series.ys)


def test_a_mixture_of_experts_routing_event_shows_in_the_stats_panel():
    from tabula.tui.widgets.stats_panel import stats_rows

    plain = folded(run_events(3))
    assert "experts" not in dict(stats_rows(plain))  # no row for a model without experts
    routing = {"kind": "routing", "time": T0 + 1, "step": 1, "tokens": BATCH_TOKENS, "balance_loss": 1.02, "imbalance": 1.5,
               "load": [[0.375, 0.25, 0.25, 0.125], [0.25, 0.25, 0.25, 0.25]]}
    state = folded([*run_events(3), routing])
    assert (state.expert_imbalance, state.balance_loss, state.expert_load[0][0]) == (1.5, 1.02, 0.375)
    assert dict(stats_rows(state))["experts"] == "imbalance 1.5x, balance loss 1.02, busiest 37.5%"
    assert folded([{**routing, "load": "junk", "imbalance": "x"}]).expert_load is None  # a hostile event is ignored
