"""train.eval.benchmarks: lm-eval tasks (the local task YAML of conftest.py) run on the model being trained
at each evaluation, emitted as benchmark events that TensorBoard and the dashboard's state take in; the
training's random generators are left as they were; a task that cannot run turns them off with a warning."""

from __future__ import annotations

import random

import numpy as np
import torch

from evaluation_helpers import TINY_RUN_OVERRIDES


def test_benchmarks_run_at_each_evaluation_and_are_recorded(tmp_path, tiny_run, tiny_cache, tasks):
    """(tiny_run first: its tokenizer, cached, serves this run too.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tabula.runtime.events import read_events
    from tabula.runtime.session import RunOptions, prepare_run, run_local
    from tabula.schemas.loader import load_spec_text
    from tabula.tui.state import RunState
    from tiny_specs import tiny_spec_yaml

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(tiny_spec_yaml())
    (tmp_path / "tasks").symlink_to(tasks)  # `include` is relative to the spec file
    overrides = (*TINY_RUN_OVERRIDES, "train.budget.tokens=2k", "train.eval.every_tokens=1k",
                 "train.checkpoint.every_tokens=2k", "train.eval.sample.max_new_tokens=0",
                 "train.eval.benchmarks={tasks: [tabula_mc, tabula_gen], limit: 2, include: tasks, batch_size: 4}",
                 f"track.tensorboard.dir={tmp_path / 'tb'}")
    spec = load_spec_text(spec_file.read_text(), overrides=overrides, base_dir=tmp_path)
    assert spec.train.eval.benchmarks.tasks == ["tabula_mc", "tabula_gen"]
    ready = prepare_run(spec, RunOptions(spec_path=str(spec_file), overrides=overrides, run_dir=tmp_path / "run",
                                         cache_dir=tiny_cache, command=("pytest",)))
    assert run_local(ready).reason == "finished"

    events = read_events(tmp_path / "run" / "events.jsonl")
    evals = [e for e in events if e["kind"] == "eval"]
    benchmarks = [e for e in events if e["kind"] == "benchmark"]
    assert len(benchmarks) == len(evals) >= 2
    assert [b["step"] for b in benchmarks] == [e["step"] for e in evals]
    for event in benchmarks:
        assert set(event["results"]) == {"tabula_mc", "tabula_gen"} and event["limit"] == 2
        assert 0.0 <= event["results"]["tabula_mc"]["acc"] <= 1.0
    assert not [e for e in events if e["kind"] == "log" and "benchmarks" in e["message"]]

    state = RunState()
    for event in events:
        state.apply(event)
    assert state.benchmarks["tabula_mc/acc"] == benchmarks[-1]["results"]["tabula_mc"]["acc"]

    accumulator = EventAccumulator(str(tmp_path / "tb" / "run"))
    accumulator.Reload()
    assert "benchmark/tabula_mc/acc" in accumulator.Tags()["scalars"]


def test_benchmarks_leave_the_random_generators_and_the_mode_as_they_were(tiny_run, tasks):
    from tokenizers import Tokenizer

    from tabula.runtime.checkpoint import load_model
    from tabula.runtime.evaluation.in_training import TrainingBenchmarks
    from tabula.schemas.train import Benchmarks

    tokenizer = Tokenizer.from_file(str(tiny_run / "tokenizer.json"))
    model = load_model(tiny_run).train()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    runner = TrainingBenchmarks(Benchmarks(tasks=["tabula_mc"], limit=2, include=tasks.name), tasks.parent,
                                tokenizer, tokenizer.token_to_id("<|endoftext|>"))
    results, problem = runner.run(model, "cpu")
    assert problem is None and set(results.scores) == {"tabula_mc"}
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert model.training


def test_a_task_that_cannot_run_turns_the_benchmarks_off_with_one_warning(tiny_run, tasks):
    from tokenizers import Tokenizer

    from tabula.runtime.checkpoint import load_model
    from tabula.runtime.evaluation.in_training import TrainingBenchmarks
    from tabula.schemas.train import Benchmarks

    tokenizer = Tokenizer.from_file(str(tiny_run / "tokenizer.json"))
    runner = TrainingBenchmarks(Benchmarks(tasks=["hub_task"], include=str(tasks)), "/", tokenizer, 0)
    results, problem = runner.run(load_model(tiny_run), "cpu")
    assert results is None and "hub_task" in problem and "no benchmarks for the rest of this run" in problem
    assert runner.run(load_model(tiny_run), "cpu") == (None, None)


def test_benchmarks_are_refused_once_in_a_run_of_several_processes_and_absent_when_not_asked():
    from tabula.runtime.evaluation.in_training import TrainingBenchmarks
    from tabula.schemas.train import Benchmarks

    several = TrainingBenchmarks(Benchmarks(tasks=["tabula_mc"]), "/", None, 0, ranks=2)
    results, problem = several.run(None, "cpu")  # type: ignore[arg-type]
    assert results is None and "one process only" in problem
    assert several.run(None, "cpu") == (None, None)  # type: ignore[arg-type]
    assert TrainingBenchmarks(None, "/", None, 0).run(None, "cpu") == (None, None)  # type: ignore[arg-type]
