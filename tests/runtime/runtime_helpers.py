"""A tiny quickstart for runtime tests: d_model 64, 2 layers, seq 32/64, a 512-token BPE over 40 stdlib files."""

from __future__ import annotations

import copy
from pathlib import Path

from ruamel.yaml import YAML

QUICKSTART = Path(__file__).resolve().parents[2] / "specs" / "quickstart.yaml"


def tiny_spec_dict(**train) -> dict:
    spec = YAML(typ="safe").load(QUICKSTART.read_text())
    spec["name"] = "tiny"
    spec["model"].update(d_model=64, n_layers=2, max_seq_len=64)
    spec["model"]["block"]["mlp"]["hidden"] = 128
    spec["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 512, "max_chars": "256k"}
    spec["data"]["sources"]["stdlib"]["max_files"] = 40
    spec["data"]["curriculum"] = [{"until_tokens": "8k", "seq_len": 32}, {"seq_len": 64}]
    spec["train"].update(
        batch_tokens=512,
        budget={"tokens": "12k"},
        eval={"every_tokens": "8k", "tokens": 1024, "sample": {"max_new_tokens": 4}},
        checkpoint={"every_tokens": "4k", "keep_last": 2},
        log={"every_steps": 1},
    )
    spec["train"].update(copy.deepcopy(train))
    spec["track"] = {"aim": {"enabled": False}}
    return spec


def tiny_spec(**train):
    from tabula.schemas.spec import Spec

    return Spec.model_validate(tiny_spec_dict(**train))


def train_in(spec, prepared, folder: Path, **kwargs):
    """Train `spec` on `prepared` data in the local engine, into a bare run folder `folder` (created):
    the loop's `Outcome` and the events it wrote. `kwargs` go to `train` (max_steps, resume_from...)."""
    import torch

    from tabula.compiler import make_plan
    from tabula.runtime.build import build_local_engine
    from tabula.runtime.events import read_events
    from tabula.runtime.loop import train
    from tabula.runtime.rundir import RunDir

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")
    run = RunDir(folder)
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu")
    engine = build_local_engine(spec, plan, torch.device("cpu"))
    outcome = train(spec, plan, engine, run, prepared, spec_hash="test", **kwargs)
    return outcome, read_events(run.events)


def one_thread_fixture():
    """A module-scoped autouse fixture (assign it in a test module: `one_thread = one_thread_fixture()`): a
    100k-parameter model gains nothing from two threads, and loses a lot when other processes share the
    cores (OpenMP spin-waits)."""
    import pytest
    import torch

    @pytest.fixture(scope="module", autouse=True)
    def one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    return one_thread
