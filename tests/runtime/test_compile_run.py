"""A compiled run: the stage change compiles nothing with dynamic shapes, compilations are logged, the
persistent compile cache is used and marked warm, and the header and manifest say the run compiled."""

from __future__ import annotations

import io
import json

import pytest
import torch
from runtime_helpers import tiny_spec_dict

from tabula.compiler import compile_cache, make_plan
from tabula.runtime.build import build_local_engine
from tabula.runtime.console import Console
from tabula.runtime.events import read_events
from tabula.runtime.loop import train
from tabula.runtime.rundir import RunDir
from tabula.schemas.spec import Spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tabula.runtime.data import prepare

    return prepare(spec(), cache_dir=tmp_path_factory.mktemp("tokens"))


@pytest.fixture(autouse=True)
def fresh_dynamo(monkeypatch):
    """Each test compiles from nothing in this process (dynamo's in-memory caches emptied), with one thread,
    and its inductor cache folder setting undone afterwards."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset-by-the-test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def spec(**compile_options) -> Spec:
    """The runtime's tiny two-stage spec (seq_len 32 for 16 steps, then 64 for 8: batch 16 x 32, then 8 x 64)
    at d_model 32, one layer, compiled."""
    raw = tiny_spec_dict()
    raw["model"].update(d_model=32, n_layers=1, compile={"enabled": True, **compile_options})
    raw["model"]["block"]["mlp"]["hidden"] = 64
    raw["model"]["block"]["attention"] = {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2}
    return Spec.model_validate(raw)


def run(spec, prepared, folder, cache):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    plan = make_plan(spec, vocab_size=prepared.vocab_size, device_type="cpu", compile_cache=cache)
    engine = build_local_engine(spec, plan, torch.device("cpu"))
    console = io.StringIO()
    outcome = train(spec, plan, engine, RunDir(folder), prepared, spec_hash="test", console=Console(console))
    assert outcome.reason == "finished"
    compiles = {e["step"]: e for e in read_events(folder / "events.jsonl")
                if e["kind"] == "log" and e["message"].startswith("torch.compile:")}
    return plan, compiles, json.loads((folder / "manifest.json").read_text())["compile"], console.getvalue()


def test_a_stage_change_compiles_nothing_and_the_cache_is_kept(prepared, tmp_path):
    plan, compiles, manifest, console = run(spec(), prepared, tmp_path / "cold", tmp_path / "cache")
    stage_change = plan.stages[1].start_tokens // plan.batch_tokens + 1  # the first step at seq_len 64
    assert plan.stages[0].micro_batch != plan.stages[1].micro_batch  # both the batch and the length change
    assert list(compiles) == [1], compiles  # the first step compiled; the stage change, evaluation, sampling nothing
    assert "graphs" in compiles[1]["message"] and compiles[1]["level"] == "info"
    assert stage_change not in compiles
    assert manifest["enabled"] and manifest["cache"] == "cold" and manifest["observed"]["recompiles"] == 0
    assert manifest["observed"]["cache_misses"] > 0
    assert "compiled (cold cache): model.compile.enabled: true" in console.splitlines()[0]
    # the graphs went to the tabula cache folder, which now says warm for this model
    assert any(compile_cache.inductor_dir(tmp_path / "cache").rglob("*"))
    assert compile_cache.is_warm(tmp_path / "cache", plan.compile.cache_key)

    torch._dynamo.reset()  # a second run, as a new process would: the graphs come from the cache
    plan, compiles, manifest, _ = run(spec(), prepared, tmp_path / "warm", tmp_path / "cache")
    assert plan.compile.cache == "warm" and list(compiles) == [1]
    assert manifest["observed"]["cache_hits"] > 0 and manifest["observed"]["cache_misses"] == 0


def test_without_dynamic_shapes_the_stage_change_recompiles_and_says_so(prepared, tmp_path):
    plan, compiles, manifest, _ = run(spec(dynamic_shapes=False), prepared, tmp_path / "run", tmp_path / "cache")
    stage_change = plan.stages[1].start_tokens // plan.batch_tokens + 1
    assert set(compiles) == {1, stage_change}, compiles
    assert compiles[stage_change]["level"] == "warning" and "recompiled" in compiles[stage_change]["message"]
    assert manifest["observed"]["recompiles"] >= 1
