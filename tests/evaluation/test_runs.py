"""`tabula runs` and `tabula compare` on run folders made by the tests: the table's rows, the curves
against tokens, the PNG and the spec differences."""

from __future__ import annotations

import json

import pytest

from fake_runs import fake_run
from tabula.cli import main
from tabula.runtime.evaluation.runs import curve, find_runs, read_events, summarize_run, wall_seconds


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "a", name="tiny-a", losses=[6.0, 5.5, 5.0, 4.8], val_losses=[5.2, 4.9],
             benchmarks={"mc_local": {"acc": 0.5, "acc_norm": 0.75}})
    fake_run(root / "b", name="tiny-b", losses=[6.0, 5.0, 4.5], overrides=("train.optimizer.lr=0.004",), end=None)
    (root / ".tmp-c-123").mkdir()  # an interrupted creation is no run
    (root / "notes").mkdir()
    return root


def test_a_run_folder_reads_back_as_one_row(runs):
    assert [p.name for p in find_runs(runs)] == ["b", "a"]  # by manifest's created
    a = summarize_run(runs / "a")
    assert (a.name, a.status, a.tokens, a.total_tokens, a.backend) == ("tiny-a", "finished", 2048, 2048, "local")
    assert a.best_val_loss == 4.9 and a.benchmarks == {"mc_local/acc": 0.5, "mc_local/acc_norm": 0.75}
    assert a.wall_seconds == 600.0 and len(a.spec_hash) == 64
    b = summarize_run(runs / "b")
    assert b.status == "ended without an end event" and b.best_val_loss is None and b.wall_seconds == 6.0


def test_curves_follow_tokens_and_a_resume_replaces_what_it_repeats(runs):
    events = read_events(runs / "a")
    assert curve(events, "loss") == [(512, 6.0), (1024, 5.5), (1536, 5.0), (2048, 4.8)]
    assert curve(events, "val_loss") == [(1024, 5.2), (2048, 4.9)]
    resumed = events + [{"kind": "start", "time": 2e9, "step": 2, "tokens": 1024},
                        {"kind": "train", "time": 2e9 + 5, "step": 3, "tokens": 1536, "loss": 4.0}]
    assert curve(resumed, "loss") == [(512, 6.0), (1024, 5.5), (1536, 4.0)]
    assert wall_seconds(resumed) == 600.0 + 5.0  # the gap between sessions is not counted
    with pytest.raises(ValueError, match="unknown metric"):
        curve(events, "accuracy")


def test_tabula_runs_prints_the_table(runs, capsys):
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "spec", "status", "tokens", "best", "val", "mc_local/acc", "mc_local/acc_norm",
                                "wall", "backend"]
    row = next(line for line in lines if line.startswith("tiny-a"))
    assert "finished" in row and "2k / 2k" in row and "4.9000" in row and "0.7500" in row and "10m00s" in row
    assert any(line.startswith("tiny-b") and "ended without an end event" in line for line in lines)
    assert main(["runs", str(runs), "--json"]) == 0
    assert [run["name"] for run in json.loads(capsys.readouterr().out)] == ["tiny-b", "tiny-a"]
    assert main(["runs", str(runs / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_tabula_compare_plots_both_runs_and_shows_the_spec_change(runs, tmp_path, capsys):
    png = tmp_path / "loss.png"
    assert main(["compare", str(runs / "a"), str(runs / "b"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "training loss against training tokens" in out and "a" in out and "tokens" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "a -> b: 1 spec change" in out and "~ train.optimizer.lr: 0.002 -> 0.004" in out
    assert main(["compare", str(runs / "a"), str(runs / "notes")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
