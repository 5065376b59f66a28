"""Evaluation tests share one tiny trained run (d_model 64, 2 layers, 512-token BPE, 8 steps of 512 tokens,
an evaluation every 2k tokens), trained once per session with TensorBoard on: the readers, the harness,
perplexity and the inspector all work on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_runs.py

from evaluation_helpers import TINY_RUN_OVERRIDES  # noqa: E402  (tests import it from there: every conftest is `conftest`)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from two threads and lose much when other processes share the cores (per
    module, so the tests of other folders keep their threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cache) -> Path:
    """A finished run folder of the tiny spec (its TensorBoard files in <tmp>/tb/<run name>/)."""
    from tabula.runtime.session import RunOptions, prepare_run, run_local
    from tabula.schemas.loader import load_spec_text
    from tiny_specs import tiny_spec_yaml

    root = tmp_path_factory.mktemp("tiny-run")
    spec_file = root / "tiny.yaml"
    spec_file.write_text(tiny_spec_yaml())
    overrides = (*TINY_RUN_OVERRIDES, f"track.tensorboard.dir={root / 'tb'}")
    spec = load_spec_text(spec_file.read_text(), overrides=overrides, base_dir=root)
    ready = prepare_run(spec, RunOptions(spec_path=str(spec_file), overrides=overrides, run_dir=root / "run",
                                         cache_dir=tiny_cache, command=("pytest",)))
    outcome = run_local(ready)
    assert outcome.reason == "finished", outcome
    return root / "run"


MC = [
    {"question": "import os\nimport", "choices": [" sys", " zzzq", " 12345"], "answer": 0},
    {"question": "def __init__(self", "choices": ["):", " ]]]", " @@@"], "answer": 0},
    {"question": "for i in", "choices": [" range(", " ;;;;", " ^^^"], "answer": 0},
    {"question": "class Foo", "choices": ["(object):", " !!!!", " $$$$"], "answer": 0},
]
GEN = [{"prompt": "import os\nimport", "target": " sys"}, {"prompt": "def f(x):\n    return", "target": " x"}]


@pytest.fixture(scope="session")
def tasks(tmp_path_factory) -> Path:
    """A folder of local lm-eval task YAML: tabula_mc (multiple choice), tabula_gen (generation), and hub_task
    (whose data is on the hub: refused offline)."""
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in MC))
    (folder / "gen.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GEN))
    (folder / "tabula_mc.yaml").write_text(f"""\
task: tabula_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {folder / 'mc.jsonl'}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (folder / "tabula_gen.yaml").write_text(f"""\
task: tabula_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {folder / 'gen.jsonl'}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 6}}
metric_list:
  - metric: exact_match
""")
    (folder / "hub_task.yaml").write_text("""\
task: hub_task
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices.text}}"
doc_to_target: 0
""")
    return folder
