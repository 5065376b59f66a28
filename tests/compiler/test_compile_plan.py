"""`model.compile.enabled: auto` decided from the plan: steps at each shape, cold or warm cache, device type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tabula.cli import main
from tabula.compiler import compile_cache
from tabula.compiler.compile_costs import COSTS
from tabula.compiler.plan import make_plan
from tabula.schemas.loader import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
QUICKSTART = str(SPECS / "quickstart.yaml")


def quickstart(*overrides: str):
    return load_spec(QUICKSTART, overrides=list(overrides))


def warm(cache, spec, vocab=4096, precision="fp32", device="cpu"):
    """Mark `spec`'s model as compiled in the cache folder `cache`, as a run that compiled it does."""
    key = compile_cache.model_key(spec, vocab_size=vocab, precision=precision, device_type=device)
    compile_cache.inductor_dir(cache).mkdir(parents=True)
    compile_cache.record_entry(cache, key, name=spec.name, graphs=2, seconds=30.0)
    return key


def test_auto_compiles_the_quickstart_on_a_cpu_and_says_why(tmp_path):
    decision = make_plan(quickstart(), vocab_size=4096, compile_cache=tmp_path).compile
    assert decision.enabled and decision.asked == "auto" and decision.cache == "cold"
    assert decision.steps == 384 and decision.break_even_steps < 384
    assert decision.saving_seconds > decision.compile_seconds
    assert decision.reason.startswith("auto: 384 steps save") and "cold compile" in decision.reason
    assert decision.dynamic_shapes and decision.cache_dir == str(compile_cache.inductor_dir(tmp_path))


def test_auto_does_not_compile_a_short_run_cold_nor_warm(tmp_path):
    for max_steps in (20, None):
        overrides = () if max_steps else ("train.budget.tokens=80k",)  # 20 steps by budget or by --max-steps
        decision = make_plan(quickstart(*overrides), vocab_size=4096, compile_cache=tmp_path, max_steps=max_steps).compile
        assert not decision.enabled and decision.steps == 20 and "would save" in decision.reason
    warm(tmp_path, quickstart())
    decision = make_plan(quickstart(), vocab_size=4096, compile_cache=tmp_path, max_steps=20).compile
    assert decision.cache == "warm" and not decision.enabled  # a warm compile still costs more than 20 steps save


def test_a_warm_cache_makes_a_shorter_run_pay(tmp_path):
    spec = quickstart("train.budget.tokens=400k")  # 100 steps
    cold = make_plan(spec, vocab_size=4096, compile_cache=tmp_path).compile
    warm(tmp_path, spec)
    hot = make_plan(spec, vocab_size=4096, compile_cache=tmp_path).compile
    assert (cold.cache, cold.enabled) == ("cold", False)
    assert (hot.cache, hot.enabled) == ("warm", True)
    assert hot.compile_seconds < cold.compile_seconds and hot.break_even_steps < 100 < cold.break_even_steps
    assert not make_plan(spec, vocab_size=4096).compile.enabled  # no cache folder given: counted cold


def test_the_cache_key_follows_the_graphs_not_the_switch(tmp_path):
    key = warm(tmp_path, quickstart())
    assert compile_cache.model_key(quickstart("model.compile.enabled=true"), vocab_size=4096, precision="fp32", device_type="cpu") == key
    for changed in (quickstart("model.d_model=128"), quickstart("model.compile.scope=model"), quickstart("parallel.activation_checkpointing=full")):
        assert compile_cache.model_key(changed, vocab_size=4096, precision="fp32", device_type="cpu") != key
    assert compile_cache.model_key(quickstart(), vocab_size=4096, precision="fp32", device_type="cuda") != key
    assert make_plan(quickstart("model.d_model=128"), vocab_size=4096, compile_cache=tmp_path).compile.cache == "cold"


def test_another_torch_version_misses(tmp_path, monkeypatch):
    warm(tmp_path, quickstart())
    assert make_plan(quickstart(), vocab_size=4096, compile_cache=tmp_path).compile.cache == "warm"
    monkeypatch.setattr(compile_cache, "torch_version", lambda: "9.9.9")
    decision = make_plan(quickstart(), vocab_size=4096, compile_cache=tmp_path).compile
    assert decision.cache == "cold" and "torch-9.9.9" in decision.cache_dir


def test_forced_values_win_and_keep_the_estimate():
    on = make_plan(quickstart("model.compile.enabled=true", "train.budget.tokens=80k"), vocab_size=4096).compile
    off = make_plan(quickstart("model.compile.enabled=false"), vocab_size=4096).compile
    assert on.enabled and on.reason.startswith("model.compile.enabled: true; estimate: 20 steps would save")
    assert not off.enabled and off.asked == "false" and off.compile_seconds is not None


def test_cuda_compiles_as_before_and_other_devices_without_a_table_do_not():
    assert "cuda" not in COSTS
    cuda = make_plan(quickstart("train.budget.tokens=80k"), vocab_size=4096, device_type="cuda").compile
    assert cuda.enabled and cuda.reason.startswith("auto: compiles on cuda")
    mps = make_plan(quickstart(), vocab_size=4096, device_type="mps").compile
    assert not mps.enabled and "no measured compile costs for mps" in mps.reason


def test_cuda_graphs_are_a_gpu_option():
    cpu = make_plan(quickstart("model.compile.mode=reduce-overhead"), vocab_size=4096).compile
    assert cpu.mode == "default" and any("CUDA graphs" in note for note in cpu.notes)
    cuda = make_plan(quickstart("model.compile.mode=reduce-overhead"), vocab_size=4096, device_type="cuda").compile
    assert cuda.mode == "reduce-overhead" and not cuda.notes


def test_a_window_that_starts_to_mask_and_static_shapes_cost_more_graphs():
    base = make_plan(quickstart(), vocab_size=4096).compile.compile_seconds
    windowed = make_plan(quickstart("model.block.attention.window=192"), vocab_size=4096).compile.compile_seconds
    static = make_plan(quickstart("model.compile.dynamic_shapes=false"), vocab_size=4096).compile.compile_seconds
    assert windowed == static == base + COSTS["cpu"].shape_cold_seconds


def test_the_plan_stays_free_of_torch(tmp_path):
    code = ("import sys; from tabula.schemas.loader import load_spec; from tabula.compiler.plan import make_plan; "
            f"p = make_plan(load_spec({QUICKSTART!r}), vocab_size=4096, compile_cache={str(tmp_path)!r}); "
            "assert p.compile.enabled; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tabula_plan_prints_the_decision(capsys, tabula_cache):
    assert main(["plan", QUICKSTART, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "compile (auto): yes" in out and "auto: 384 steps save" in out and "cold" in out
    assert main(["plan", QUICKSTART, "--device", "cpu", "--json", "train.budget.tokens=80k"]) == 0
    data = json.loads(capsys.readouterr().out)["compile"]
    assert data["enabled"] is False and data["steps"] == 20 and data["summary"] == "eager"
    assert data["cache_dir"].startswith(str(tabula_cache))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_decisions_are_json_able(device):
    json.dumps(make_plan(quickstart(), vocab_size=4096, device_type=device).as_dict())
