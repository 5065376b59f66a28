"""Evaluation tests share one tiny trained run (d_model 64, 2 layers, 512-token BPE, 8 steps of 512 tokens,
an evaluation every 2k tokens), trained once per session with TensorBoard on: the readers, the harness,
perplexity and the inspector all work on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_runs.py

TINY_RUN_OVERRIDES = (
    "train.budget.tokens=4k",
    "train.eval.every_tokens=2k",
    "train.eval.tokens=512",
    "train.checkpoint.every_tokens=4k",
    "data.sources.stdlib.max_files=15",
    "data.tokenizer.max_chars=96k",
)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from two threads and lose much when other processes share the cores."""
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
