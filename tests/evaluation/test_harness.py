"""lm-eval on the tiny trained run: a local multiple-choice task and a local generation task (task YAML
and JSON lines written here), the scoring checked against the model's own forward pass, results saved in
the run folder and appended as an event; perplexity on a text file; a task needing a download refused."""

from __future__ import annotations

import json
import math

import pytest

from tabula.cli import main

def _lm(run):
    from tokenizers import Tokenizer

    from tabula.runtime.checkpoint import load_model
    from tabula.runtime.evaluation.harness import TabulaLM

    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    return TabulaLM(load_model(run), tokenizer, eos_id=tokenizer.token_to_id("<|endoftext|>"), batch_size=3)


class _Request:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_is_the_models_own_log_probability(tiny_run):
    import torch

    lm = _lm(tiny_run)
    context, continuation = "import os\nimport", " sys\n"
    (total, greedy), = lm.loglikelihood([_Request(context, continuation)])
    ids = [lm.eos_id] + lm.encode(context)
    cont = lm.encode(context + continuation)[len(ids) - 1:]
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([ids + cont[:-1]])), -1)[0]
    expected = sum(float(logprobs[len(ids) - 1 + i, token]) for i, token in enumerate(cont))
    assert math.isclose(total, expected, rel_tol=1e-5) and isinstance(greedy, bool)
    # a text longer than the context (64) is scored in windows, each token once
    text = "import os\n" * 40
    rolling, = lm.loglikelihood_rolling([_Request(text)])
    assert rolling < 0 and len(lm.encode(text)) > 64
    assert math.isclose(rolling, sum(lm.loglikelihood_rolling([_Request(text)])), rel_tol=1e-6)


def test_tabula_eval_runs_local_tasks_and_records_them(tiny_run, tasks, capsys):
    from tabula.runtime.events import read_events
    from tabula.runtime.evaluation.runs import summarize_run

    code = main(["eval", str(tiny_run), "--tasks", "tabula_mc,tabula_gen", "--include", str(tasks), "--batch-size", "4"])
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    assert lines[0].split() == ["task", "metric", "value"]
    assert any(line.split()[:2] == ["tabula_mc", "acc"] for line in lines)
    assert any(line.split()[:2] == ["tabula_gen", "exact_match"] for line in lines)
    latest = json.loads((tiny_run / "eval" / "results.json").read_text())
    assert set(latest["tasks"]) == {"tabula_mc", "tabula_gen"}
    assert 0.0 <= latest["tasks"]["tabula_mc"]["acc"] <= 1.0
    event = [e for e in read_events(tiny_run / "events.jsonl") if e["kind"] == "benchmark"][-1]
    assert event["results"] == latest["tasks"] and event["step"] > 0
    assert summarize_run(tiny_run).benchmarks["tabula_mc/acc"] == latest["tasks"]["tabula_mc"]["acc"]
    # TensorBoard (the run's spec has it) got the scores too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tiny_run.parent / "tb" / tiny_run.name))
    accumulator.Reload()
    assert "benchmark/tabula_mc/acc" in accumulator.Tags()["scalars"]


def test_a_task_needing_a_download_fails_offline_in_one_line(tiny_run, tasks, capsys):
    """(A local YAML naming a hub dataset, as lm-eval's arc_easy does: indexing lm-eval's own 15k tasks to
    reach arc_easy itself would cost the test a minute.)"""
    from tabula.runtime.evaluation.harness import BenchmarkError, build_tasks, task_manager

    assert main(["eval", str(tiny_run), "--tasks", "hub_task", "--include", str(tasks), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tabula eval: error: task 'hub_task' needs a download") and "\n" not in err
    with pytest.raises(BenchmarkError, match="unknown task 'tabula_mcq' \\(did you mean tabula_mc"):
        build_tasks(["tabula_mcq"], task_manager([tasks], defaults=False))


def test_perplexity_on_a_text_file(tiny_run, tmp_path, capsys):
    text = tmp_path / "held_out.txt"
    text.write_text("import os\nimport sys\n\ndef main():\n    return 0\n" * 8)
    assert main(["eval", str(tiny_run), "--text", str(text), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 64 and 1.0 < result["perplexity"] < 512 and result["bits_per_byte"] > 0


def test_generate_until_is_the_models_greedy_continuation_cut_at_the_stop(tiny_run):
    import torch

    from tabula.runtime.evaluation.harness import cut_at_stops

    lm = _lm(tiny_run)
    contexts = ["import os\n", "def f(x):\n    return", "class A"]
    texts = lm.generate_until([_Request(context, {"until": ["\n\n"], "max_gen_toks": 8}) for context in contexts])
    for context, text in zip(contexts, texts):
        ids = [lm.eos_id] + lm.encode(context)
        new = []
        with torch.no_grad():
            for _ in range(8):  # the uncached reference: the whole context again for each token
                new.append(int(lm.model(torch.tensor([ids + new]))[0, -1].argmax()))
        new = new[: new.index(lm.eos_id)] if lm.eos_id in new else new
        assert text == cut_at_stops(lm.decode(new), ["\n\n"])
    assert cut_at_stops("a\nb\n\nc", ["\n\n", "b"]) == "a\n"
