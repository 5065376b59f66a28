"""The example specs: each loads, points editors at the schema, and `tabula plan` runs on it; the
TabulaPrima specs have the original models' sizes. The 1.3B plan runs `tabula` as a user would
(a subprocess, which plans the model without building it); the other specs go through the same
`tabula.cli.main` in this process, sparing a process start and a torch import each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tabula.schemas.loader import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
ALL = sorted(SPECS.glob("*.yaml")) + sorted((SPECS / "presets").glob("*.yaml"))
TABULA = [sys.executable, "-m", "tabula.cli"]


def plan_json(path: Path, *extra: str) -> dict:
    """`tabula plan PATH --json EXTRA...` in a subprocess."""
    done = subprocess.run([*TABULA, "plan", str(path), "--json", *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def plan_in_process(path: Path, capsys, *extra: str) -> dict:
    from tabula.cli import main

    assert main(["plan", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out, parse_constant=_not_json)


def _not_json(constant: str):
    raise AssertionError(f"plan --json wrote {constant}, which strict JSON readers (jq, browsers) refuse")


def test_every_spec_is_found():
    names = {p.relative_to(SPECS).as_posix() for p in ALL}
    assert {"quickstart.yaml", "tabulaprima-278m.yaml", "tabulaprima-1.3b.yaml", "zero2.yaml", "zero3-offload.yaml",
            "finetune-chat.yaml", "finetune-lora.yaml", "presets/llama-tiny.yaml", "presets/mistral-tiny.yaml", "presets/mla-tiny.yaml",
            "presets/mixtral-tiny.yaml", "presets/deepseek-v3-tiny.yaml"} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(SPECS).as_posix())
def test_spec_loads_and_names_the_schema(path):
    load_spec(path)
    first = path.read_text().splitlines()[0]
    schema = "../../schemas/tabula-spec.schema.json" if path.parent.name == "presets" else "../schemas/tabula-spec.schema.json"
    assert first == f"# yaml-language-server: $schema={schema}"
    assert (path.parent / schema).resolve() == ROOT / "schemas" / "tabula-spec.schema.json"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(SPECS).as_posix())
def test_plan_runs_on_every_spec(path, capsys):
    plan = plan_in_process(path, capsys)
    spec = load_spec(path)
    assert plan["name"] == spec.name
    assert plan["parameters"]["total"] > plan["parameters"]["embedding"] > 0
    assert plan["steps"]["total"] == sum(stage["steps"] for stage in plan["stages"]) > 0
    assert plan["memory_per_rank"]["total"] == sum(v for k, v in plan["memory_per_rank"].items() if k != "total")


def test_plan_lists_the_layers_and_counts_a_tokens_active_parameters(capsys):
    plan = plan_in_process(SPECS / "presets" / "deepseek-v3-tiny.yaml", capsys)
    assert [(run["layers"], run["block"]) for run in plan["layers"]] == [("0", "model.layers.0.block"), ("1-3", "model.block")]
    assert plan["layers"][1]["active_parameters"] < plan["layers"][1]["parameters"]
    assert plan["parameters"]["active"] < plan["parameters"]["total"]
    from tabula.cli import main

    assert main(["plan", str(SPECS / "presets" / "deepseek-v3-tiny.yaml")]) == 0
    text = capsys.readouterr().out
    assert "active a token" in text and "model.layers.0.block   mla + swiglu 688" in text


def test_tabulaprima_278m_has_the_original_size(capsys):
    plan = plan_in_process(SPECS / "tabulaprima-278m.yaml", capsys, "--device", "cuda")
    # the original model_arch.MLATransformer exactly, the bias on each attention output projection
    # (and on nothing else in its attention) included
    assert plan["parameters"]["total"] == 278_340_480
    assert plan["parameters"]["embedding"] == 100_277 * 1152
    assert plan["stages"][0]["seq_len"] == 512
    assert plan["tokens"]["budget"] == 10 * plan["parameters"]["total"]  # 10 tokens a parameter


def test_tabulaprima_1_3b_plans_without_building_it():
    plan = plan_json(SPECS / "tabulaprima-1.3b.yaml", "--device", "cuda", "--world-size", "1")
    assert plan["parameters"]["total"] == 1_318_574_080
    assert plan["stages"][0]["seq_len"] == 2048
    assert plan["precision"] == "fp32"


def test_zero_specs_extend_quickstart():
    quickstart = load_spec(SPECS / "quickstart.yaml")
    for name, stage, offload in (("zero2.yaml", 2, False), ("zero3-offload.yaml", 3, True)):
        spec = load_spec(SPECS / name)
        assert spec.model == quickstart.model and spec.train == quickstart.train
        assert (spec.parallel.backend, spec.parallel.world_size, spec.parallel.zero.stage) == ("deepspeed", 2, stage)
        assert spec.parallel.zero.offload_optimizer is offload and spec.parallel.zero.offload_params is offload


def test_presets_are_what_their_names_say():
    llama = load_spec(SPECS / "presets" / "llama-tiny.yaml").model
    assert (llama.block.attention.kind, llama.position.kind, llama.block.norm.kind, llama.block.mlp.kind) == ("gqa", "rope", "rmsnorm", "swiglu")
    mistral = load_spec(SPECS / "presets" / "mistral-tiny.yaml").model
    assert mistral.block.attention.window is not None and mistral.block.attention.window < mistral.max_seq_len
    mla = load_spec(SPECS / "presets" / "mla-tiny.yaml").model
    assert mla.block.attention.kind == "mla" and mla.block.attention.latent_norm
    mixtral = load_spec(SPECS / "presets" / "mixtral-tiny.yaml").model
    assert (mixtral.block.mlp.kind, mixtral.block.mlp.router, mixtral.block.mlp.n_shared, mixtral.layers) == ("moe", "softmax", 0, [])
    deepseek = load_spec(SPECS / "presets" / "deepseek-v3-tiny.yaml").model
    assert (deepseek.block.attention.kind, deepseek.block.mlp.kind, deepseek.block.mlp.balance) == ("mla", "moe", "bias")
    assert [block.mlp.kind for block in deepseek.layer_blocks] == ["swiglu", "moe", "moe", "moe"]


@pytest.mark.parametrize("preset", ["llama-tiny", "mistral-tiny", "mla-tiny", "mixtral-tiny", "deepseek-v3-tiny"])
def test_presets_are_usable_with_extends(tmp_path, preset):
    path = tmp_path / "mine.yaml"
    path.write_text(f"name: mine\nextends: {preset}\nmodel:\n  n_layers: 2\n")
    spec = load_spec(path)
    base = load_spec(SPECS / "presets" / f"{preset}.yaml")
    assert spec.name == "mine" and spec.model.n_layers == 2
    assert spec.model.block == base.model.block and spec.train == base.train
