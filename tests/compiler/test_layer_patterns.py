"""Layer patterns: model.block plus per-layer overrides by index ranges (model.layers): validated,
built layer by layer (its window per layer), counted by the plan as built, shown and diffed, and
invisible in the canonical form of a spec without overrides."""

from __future__ import annotations

import copy

import pytest
import torch
from compiler_specs import BASE, tiny_spec
from pydantic import ValidationError

from tabula.compiler import build_model
from tabula.compiler.estimate import count_parameters, flops_per_token
from tabula.compiler.layer_table import layer_runs
from tabula.schemas.canonical import canonical_yaml
from tabula.schemas.spec import Spec

DENSE = {"norm": {"kind": "rmsnorm"}, "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "window": 3},
         "mlp": {"kind": "gelu", "hidden": 32}}


def patterned(n_layers: int = 4, layers: list | None = None) -> Spec:
    raw = copy.deepcopy(BASE)
    raw["model"] |= {"n_layers": n_layers, "layers": [{"start": 0, "stop": 2, "block": DENSE}] if layers is None else layers}
    return Spec.model_validate(raw)


def test_without_overrides_the_canonical_form_is_the_one_before_layer_patterns():
    text = canonical_yaml(tiny_spec())
    assert "\n  layers:" not in text and "transformer" not in text
    assert canonical_yaml(Spec.model_validate(copy.deepcopy(BASE) | {"model": BASE["model"] | {"layers": []}})) == text
    with_kind = copy.deepcopy(BASE)
    with_kind["model"]["block"]["kind"] = "transformer"
    assert canonical_yaml(Spec.model_validate(with_kind)) == text


def test_each_layer_is_built_from_its_own_block_and_the_plan_counts_it_as_built():
    spec = patterned(n_layers=5, layers=[{"start": 0, "stop": 2, "block": DENSE}, {"start": 3, "step": 2, "block": DENSE}])
    model = build_model(spec, device="cpu")
    kinds = [type(block.mlp).__name__ for block in model.blocks]
    assert kinds == ["GeluMLP", "GeluMLP", "SwigluMLP", "GeluMLP", "SwigluMLP"]
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == spec.model.parameter_shapes(97)
    assert count_parameters(spec.model, 97).total == sum(p.numel() for p in model.parameters())
    runs = [(run.span, run.path) for run in layer_runs(spec.model)]
    assert runs == [("0-1", "model.layers.0.block"), ("2", "model.block"), ("3", "model.layers.1.block"), ("4", "model.block")]
    dense_only = tiny_spec(n_layers=5, block=DENSE)
    assert flops_per_token(dense_only.model, 97, 8) < flops_per_token(spec.model, 97, 8)  # swiglu 96 costs more than gelu 32


def test_the_window_is_per_layer():
    """Layers 0-1 attend within a window of 3: with the window, the last token's logits change; the
    layers without one still see the whole context (the model is not the all-windowed one)."""
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    spec = patterned()
    model = build_model(spec, device="cpu").eval()
    assert model.windows == [3, None]
    unwindowed = build_model(patterned(layers=[{"start": 0, "stop": 2, "block": DENSE | {"attention": DENSE["attention"] | {"window": None}}}]), device="cpu").eval()
    raw = copy.deepcopy(BASE)
    raw["model"] |= {"n_layers": 4, "block": raw["model"]["block"] | {"attention": DENSE["attention"]},
                     "layers": [{"start": 0, "stop": 2, "block": DENSE}]}
    all_windowed = build_model(Spec.model_validate(raw), device="cpu").eval()
    with torch.no_grad():
        out, plain, windowed = model(ids), unwindowed(ids), all_windowed(ids)
    torch.testing.assert_close(out[:, :3], plain[:, :3])  # within the window nothing differs
    assert not torch.allclose(out[:, -1], plain[:, -1]) and not torch.allclose(out[:, -1], windowed[:, -1])


@pytest.mark.parametrize("layers, path, words", [
    ([{"start": 4, "block": DENSE}], ("model", "layers", 0, "start"), "must be below n_layers (4)"),
    ([{"start": 0, "stop": 5, "block": DENSE}], ("model", "layers", 0, "stop"), "must be at most n_layers (4)"),
    ([{"start": 2, "stop": 2, "block": DENSE}], ("model", "layers", 0, "stop"), "covers no layer"),
    ([{"start": 0, "step": 2, "block": DENSE}, {"start": 1, "stop": 3, "block": DENSE}], ("model", "layers", 1, "start"),
     "overlaps layers[0] at layer 2"),
    ([{"start": 1, "block": DENSE | {"attention": {"kind": "mha", "n_heads": 5}}}], ("model", "layers", 0, "block", "attention", "n_heads"),
     "divisible by n_heads (5)"),
])
def test_bad_ranges_and_blocks_are_refused_at_their_spec_path(layers, path, words):
    with pytest.raises(ValidationError) as caught:
        patterned(layers=layers)
    error = caught.value.errors()[0]
    assert tuple(error["loc"]) + tuple(error.get("ctx", {}).get("field", ())) == path or words in error["msg"]
    assert words in error["msg"]


def test_stepped_ranges_that_interleave_do_not_overlap():
    spec = patterned(n_layers=8, layers=[{"start": 0, "step": 2, "block": DENSE}, {"start": 1, "step": 4, "block": DENSE}])
    assert [spec.model.block_path(i) for i in range(4)] == ["model.layers.0.block", "model.layers.1.block", "model.layers.0.block", "model.block"]


def test_the_wizard_offers_layer_overrides_as_rows_of_ranges_and_blocks():
    from tabula.schemas.model import Layers, Model
    from tabula.tui.schema_form import LIST, MODEL, form_fields

    layers = next(field for field in form_fields(Model) if field.name == "layers")
    assert layers.widget == LIST and layers.item.model is Layers and not layers.required
    assert [(f.name, f.widget) for f in form_fields(Layers)][-1] == ("block", MODEL)


def test_a_run_resumes_across_an_overrides_window_but_not_a_new_block_shape():
    from tabula.compiler.impact import resume_compatibility

    base = patterned()
    window = patterned(layers=[{"start": 0, "stop": 2, "block": DENSE | {"attention": DENSE["attention"] | {"window": 5}}}])
    wider = patterned(layers=[{"start": 0, "stop": 2, "block": DENSE | {"mlp": {"kind": "gelu", "hidden": 48}}}])
    assert resume_compatibility(base, window) == (True, [])
    ok, reasons = resume_compatibility(base, wider)
    assert not ok and reasons == ["model.layers.0.block.mlp.hidden reshapes the weights, so a checkpoint does not load"]
