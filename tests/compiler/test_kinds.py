"""The registry walk: every kind the spec offers (each member of the attention, mlp, norm and
position unions) and every registered block class has all its parts: a spec class answering
the plan's questions (shapes, FLOPs, activation bytes), a builder, an init rule covering every
parameter it registers, and a Hugging Face mapping or an explicit "no equivalent"."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import kind_examples
import pytest
import torch
from compiler_specs import tiny_spec
from pydantic import TypeAdapter
from torch import nn

from tabula.compiler import blocks
from tabula.compiler.blocks.init import WeightInit
from tabula.compiler.hf import hf_architecture
from tabula.compiler.hf_mapping import HFMapping, NoHF
from tabula.schemas import model as model_spec
from tabula.schemas.blocks.costs import Storage, count
from tabula.schemas.init import GPT2Init, TabulaPrimaInit
from tabula.schemas.registry import Registry

D_MODEL, ROTARY, SEQ_LEN = 64, 16, 32

# family: (the spec's union, the registry, the examples, the widths a builder takes, where in the model)
FAMILIES: dict[str, tuple[Any, Registry, dict, dict, str]] = {
    "block": (model_spec.Block, blocks.BLOCK, kind_examples.BLOCK, {"d_model": D_MODEL, "dropout": 0.0}, "block"),
    "attention": (model_spec.Attention, blocks.ATTENTION, kind_examples.ATTENTION,
                  {"d_model": D_MODEL, "norm_eps": 1e-5, "dropout": 0.0}, "block.attention"),
    "mlp": (model_spec.MLP, blocks.MLP, kind_examples.MLP, {"d_model": D_MODEL}, "block.mlp"),
    "norm": (model_spec.Norm, blocks.NORM, kind_examples.NORM, {"dim": D_MODEL}, "block.norm"),
    "position": (model_spec.Position, blocks.POSITION, kind_examples.POSITION,
                 {"d_model": D_MODEL, "rotary_dim": ROTARY, "max_seq_len": SEQ_LEN}, "position"),
}


def union_kinds(union: Any) -> dict[str, type]:
    """kind -> spec class of each member of a discriminated union."""
    inner = typing.get_args(union)[0]
    members = typing.get_args(inner) if typing.get_origin(inner) in (typing.Union, types.UnionType) else (inner,)
    members = tuple(typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members)  # Tag()ged members
    return {typing.get_args(member.model_fields["kind"].annotation)[0]: member for member in members}


def facts(family: str, spec: Any) -> dict[str, Any]:
    """What the plan asks a kind's spec class, by part; raises where a part is missing."""
    storage = Storage("fp32")
    if family == "block":
        return {"shapes": spec.parameter_shapes("", D_MODEL), "flops": spec.flops_per_token(D_MODEL, SEQ_LEN),
                "activation bytes": spec.activation_bytes_per_token(D_MODEL, SEQ_LEN, storage, 0.1), "widths": spec.attention_dims(D_MODEL),
                "active": spec.active_parameters(D_MODEL), "summary": spec.summary()}
    if family == "attention":
        return {"shapes": spec.parameter_shapes("", D_MODEL), "flops": spec.flops_per_token(D_MODEL, SEQ_LEN),
                "activation bytes": spec.activation_bytes_per_token(D_MODEL, SEQ_LEN, storage, 0.1), "widths": spec.dims(D_MODEL)}
    if family == "mlp":
        return {"shapes": spec.parameter_shapes("", D_MODEL), "flops": spec.flops_per_token(D_MODEL),
                "activation bytes": spec.activation_bytes_per_token(D_MODEL, storage)}
    if family == "norm":
        return {"shapes": spec.parameter_shapes("", D_MODEL), "flops": spec.flops_per_token(D_MODEL),
                "activation bytes": spec.activation_bytes_per_token(D_MODEL, storage)}
    return {"shapes": spec.parameter_shapes("", D_MODEL, SEQ_LEN), "flops": spec.flops_per_token(D_MODEL),
            "activation bytes": spec.activation_bytes_per_token(D_MODEL, storage)}


def built(family: str, registered: Any, spec: Any) -> nn.Module:
    with torch.device("meta"):
        return registered.build(spec, **FAMILIES[family][3])


def missing_parts(family: str, kind: str, registered: Any, spec_class: type | None, examples: list[dict]) -> list[str]:
    """The parts kind `kind` of `family` lacks: [] when it is complete."""
    missing = [] if spec_class is not None else ["spec class (a member of the spec's union)"]
    missing += [] if examples else ["an example in tests/compiler/kind_examples.py"]
    if registered is None:
        return [*missing, "registry entry"]
    missing += [] if callable(getattr(registered, "build", None)) else ["builder (classmethod build)"]
    missing += [] if callable(getattr(registered, "init_weights", None)) else ["init_weights"]
    hf = getattr(registered, "hf", None)
    missing += [] if isinstance(hf, (HFMapping, NoHF)) else ["hf (an HFMapping, or NoHF(reason))"]
    for example in examples if spec_class is not None else []:
        spec = spec_class.model_validate(example)
        for part in ("shapes", "flops", "activation bytes", "widths"):
            try:
                facts(family, spec)
            except (NotImplementedError, AttributeError):
                missing.append(part)
                break
    return list(dict.fromkeys(missing))


CASES = [(family, kind) for family, (union, registry, examples, _, _) in FAMILIES.items()
         for kind in sorted(set(union_kinds(union)) | set(registry.kinds()) | set(examples))]
EXAMPLES = [(family, kind, example) for family, kind in CASES for example in FAMILIES[family][2].get(kind, [])]


@pytest.mark.parametrize("family, kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_every_kind_has_every_part(family, kind):
    union, registry, examples, _, _ = FAMILIES[family]
    assert missing_parts(family, kind, registry.get(kind), union_kinds(union).get(kind), examples.get(kind, [])) == []


def test_the_walk_names_what_an_incomplete_kind_lacks():
    class Bare(nn.Module):
        pass

    class Half(model_spec.AttentionSpec):
        kind: typing.Literal["half"]

    lacks = missing_parts("attention", "half", Bare, Half, [{"kind": "half", "n_heads": 2}])
    assert lacks == ["builder (classmethod build)", "init_weights", "hf (an HFMapping, or NoHF(reason))", "shapes"]
    assert missing_parts("attention", "ghost", None, None, []) == [
        "spec class (a member of the spec's union)", "an example in tests/compiler/kind_examples.py", "registry entry"]


@pytest.mark.parametrize("family, kind, example", EXAMPLES, ids=[f"{f}-{k}-{i}" for i, (f, k, _) in enumerate(EXAMPLES)])
def test_every_kind_builds_what_its_spec_reports_and_initialises_all_of_it(family, kind, example):
    union, registry = FAMILIES[family][:2]
    spec = TypeAdapter(union).validate_python(example)
    reported = facts(family, spec)
    module = built(family, registry[kind], spec)
    assert [(name, tuple(p.shape)) for name, p in module.named_parameters()] == reported["shapes"]
    # positions are lookups; a mixture of experts runs a token through its active parameters only
    active = getattr(spec, "active_parameters", None)
    matmul_parameters = 0 if family == "position" else active(D_MODEL) if active else count(reported["shapes"])
    assert reported["flops"] >= 6 * matmul_parameters and reported["activation bytes"] >= 0
    module.to_empty(device="cpu")
    for scheme in (GPT2Init(), TabulaPrimaInit(kind="tabulaprima")):
        with torch.no_grad():
            for param in module.parameters():
                param.fill_(math.nan)
        module.init_weights(WeightInit(scheme, seed=1, n_layers=2))
        left = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
        assert left == [], f"{kind}.init_weights leaves {left} uninitialised"


@pytest.mark.parametrize("family, kind, example", EXAMPLES, ids=[f"{f}-{k}-{i}" for i, (f, k, _) in enumerate(EXAMPLES)])
def test_every_kind_maps_to_hugging_face_or_says_it_does_not(family, kind, example):
    union, registry, _, _, where = FAMILIES[family]
    hf = registry[kind].hf
    if isinstance(hf, NoHF):
        assert hf.reason.startswith(kind) and "no Hugging Face equivalent" in hf.reason
        return
    section, _, name = where.rpartition(".")
    model = tiny_spec(**({section: {name: example}} if section else {name: example})).model
    spec = TypeAdapter(union).validate_python(example)
    architecture = hf_architecture(model)
    assert isinstance(hf.config(spec, model, architecture), dict)
    if hf.problems(spec, model, architecture, f"model.{where}"):
        return  # said, with the field it is about; the export refuses before it names tensors
    state = built(family, registry[kind], spec).state_dict()
    named = hf.tensors(spec, state)
    assert sum(t.numel() for t in named.values()) == sum(t.numel() for t in state.values())
