"""Properties of the canonical form, the hash and the diff, over many generated specs written
many ways."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec_strategies import plain, spec_data, split_for_extends, write_yaml
from tabula.schemas.canonical import canonical_dict, canonical_yaml, spec_hash
from tabula.schemas.diff import diff_specs
from tabula.schemas.loader import load_spec, load_spec_text

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def dump_plain(data: dict) -> str:
    return write_yaml(plain(data), seed=0)


@SETTINGS
@given(spec_data(), st.integers(0, 2**32))
def test_canonical_yaml_loads_back_to_an_equal_spec(data, seed):
    spec = load_spec_text(write_yaml(data, seed))
    text = canonical_yaml(spec)
    again = load_spec_text(text)
    assert again == spec
    assert canonical_yaml(again) == text
    assert spec_hash(again) == spec_hash(spec)


@SETTINGS
@given(spec_data(), st.integers(0, 2**32), st.integers(0, 2**32))
def test_hash_ignores_order_comments_quoting_and_number_spelling(data, seed_a, seed_b):
    text_a, text_b = write_yaml(data, seed_a), write_yaml(data, seed_b)
    a, b = load_spec_text(text_a), load_spec_text(text_b)
    assert canonical_dict(a) == canonical_dict(b)
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) == spec_hash(load_spec_text(dump_plain(data)))


@SETTINGS
@given(spec_data(), st.integers(0, 2**32))
def test_hash_is_the_same_extended_or_inlined(tmp_path_factory, data, seed):
    folder = tmp_path_factory.mktemp("extends")
    base, child = split_for_extends(data, seed)
    (folder / "base.yaml").write_text(write_yaml(base, seed))
    (folder / "child.yaml").write_text(write_yaml({**child, "extends": "base.yaml"}, seed + 1))
    extended = load_spec(folder / "child.yaml")
    inlined = load_spec_text(write_yaml(data, seed + 2))
    assert spec_hash(extended) == spec_hash(inlined)
    assert diff_specs(extended, inlined) == []


@SETTINGS
@given(spec_data())
def test_a_spec_differs_from_itself_in_nothing(data):
    spec = load_spec_text(dump_plain(data))
    assert diff_specs(spec, spec) == []


# (override, the path it changes) for edits that keep any generated spec valid
EDITS = [
    (lambda s: f"seed={s.seed + 1}", lambda s: "seed"),
    (lambda s: f"name={s.name}-b", lambda s: "name"),
    (lambda s: f"model.n_layers={s.model.n_layers + 1}", lambda s: "model.n_layers"),
    (lambda s: f"train.optimizer.lr={s.train.optimizer.lr * 2}", lambda s: "train.optimizer.lr"),
    (lambda s: f"train.budget.tokens={s.train.budget.tokens + 2**20}", lambda s: "train.budget.tokens"),
    (lambda s: "model.dropout=0.25", lambda s: "model.dropout"),
    (lambda s: "train.grad_clip=0.5", lambda s: "train.grad_clip"),
    (lambda s: f"model.block.norm.eps={s.model.block.norm.eps * 10}", lambda s: "model.block.norm.eps"),
    (lambda s: "track.aim.repo=elsewhere", lambda s: "track.aim.repo"),
    (lambda s: f"track.tags={json.dumps([*s.track.tags, 't'])}", lambda s: f"track.tags.{len(s.track.tags)}"),
    (lambda s: "data.packing.document_masking=true", lambda s: "data.packing.document_masking"),
    (lambda s: f"data.tokenizer.vocab_size={s.data.tokenizer.vocab_size + 1}", lambda s: "data.tokenizer.vocab_size"),
]


@SETTINGS
@given(spec_data(), st.sets(st.integers(0, len(EDITS) - 1), min_size=1))
def test_diff_lists_exactly_the_changed_paths(data, chosen):
    a = load_spec_text(dump_plain(data))
    overrides = [EDITS[index][0](a) for index in sorted(chosen)]
    expected = {EDITS[index][1](a) for index in sorted(chosen)}
    b = load_spec_text(dump_plain(data), overrides=overrides)
    changes = diff_specs(a, b)
    assert {change.path for change in changes} == expected
    for change in changes:
        assert change.kind == ("added" if change.path.startswith("track.tags.") else "changed")
    assert (spec_hash(a) == spec_hash(b)) is (not changes)


def test_the_writer_really_varies_the_text():
    rng = random.Random(0)
    texts = {write_yaml({"name": "x", "model": {"d_model": 64, "n_layers": 2}, "t": 0.001}, rng.randrange(2**32)) for _ in range(20)}
    assert len(texts) > 5
