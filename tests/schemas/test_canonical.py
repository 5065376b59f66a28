"""The canonical form: one spelling of every resolved spec."""

from __future__ import annotations

from schema_texts import MINIMAL
from tabula.schemas.canonical import canonical_dict, canonical_yaml, format_float, spec_hash
from tabula.schemas.loader import load_spec_text


def test_defaults_filled_kind_first_sources_sorted_quantities_numbers():
    text = MINIMAL.replace("    stdlib: {kind: python_stdlib}\n",
                           "    zeta: {paths: [a.txt], kind: files}\n    alpha: {kind: python_stdlib}\n")
    data = canonical_dict(load_spec_text(text))
    assert "extends" not in data
    assert list(data["data"]["sources"]) == ["alpha", "zeta"]
    assert list(data["data"]["sources"]["zeta"])[0] == "kind"
    assert data["train"]["batch_tokens"] == 4096 and data["train"]["budget"]["tokens"] == 2**20
    assert data["train"]["grad_clip"] == 1.0 and data["data"]["validation"]["fraction"] == 0.01
    assert data["parallel"]["zero"]["stage"] == 0


def test_spellings_that_do_not_change_the_hash():
    base = load_spec_text(MINIMAL)
    for old, new in [("4k", "4096"), ("4k", "'4096'"), ("1.0e-3", "0.001"), ("1.0e-3", "1e-3"),
                     ("1M", "1048576"), ("name: tiny", "name: 'tiny'"), ("n_heads: 4, n_kv_heads: 2", "n_kv_heads: 2, n_heads: 4")]:
        assert spec_hash(load_spec_text(MINIMAL.replace(old, new))) == spec_hash(base), (old, new)
    assert spec_hash(load_spec_text("# a comment\n" + MINIMAL)) == spec_hash(base)


def test_real_changes_change_the_hash():
    base = spec_hash(load_spec_text(MINIMAL))
    assert spec_hash(load_spec_text(MINIMAL.replace("4k", "8k"))) != base
    assert spec_hash(load_spec_text(MINIMAL, overrides=["seed=1"])) != base


def test_floats_have_one_spelling_every_yaml_reads_as_a_float():
    assert [format_float(x) for x in (1e-5, 0.001, 10000.0, 1e20, -0.5, 3e-4)] == [
        "1.0e-05", "0.001", "10000.0", "1.0e+20", "-0.5", "0.0003"]


def test_strings_that_look_like_other_things_are_quoted():
    spec = load_spec_text(MINIMAL + "track: {tags: ['yes', '1e3', 'null', 'x: y', 'plain words', '']}\n")
    text = canonical_yaml(spec)
    assert '- "yes"\n' in text and '- "1e3"\n' in text and '- "null"\n' in text and '- "x: y"\n' in text
    assert "- plain words\n" in text and '- ""\n' in text
    assert load_spec_text(text) == spec


def test_quoted_numbers_are_numbers_but_booleans_are_not():
    from tabula.schemas.errors import SpecErrors

    assert load_spec_text(MINIMAL.replace("d_model: 64", "d_model: '64'")).model.d_model == 64
    try:
        load_spec_text(MINIMAL.replace("n_layers: 2", "n_layers: true"))
    except SpecErrors as raised:
        (error,) = raised.errors
        assert (error.dotted_path, error.line, error.message) == ("model.n_layers", 4, "expected a number, found true")
    else:
        raise AssertionError("n_layers: true was accepted")


def test_a_run_spec_keeps_its_relative_paths_against_the_spec_it_ran(tmp_path):
    """A fine-tuning run's `from: ../build/base` points where it did when it ran, not into the run folder."""
    import json
    from pathlib import Path

    from tabula.schemas.canonical import canonical_yaml
    from tabula.schemas.loader import load_run_spec, load_spec

    source = Path(__file__).resolve().parents[2] / "specs" / "finetune-lora.yaml"
    spec = load_spec(source)
    (tmp_path / "resolved.yaml").write_text(canonical_yaml(spec))
    assert load_run_spec(tmp_path).base_dir == tmp_path  # no manifest: the run folder
    (tmp_path / "manifest.json").write_text(json.dumps({"spec_path": str(source)}))
    ran = load_run_spec(tmp_path)
    assert ran == spec and ran.base_dir == source.parent and ran.model.init.path == "../build/base"


def test_a_mixture_enters_the_hash_only_when_set():
    import pytest
    from tabula.schemas.errors import SpecErrors

    base = load_spec_text(MINIMAL)
    assert "mixture" not in canonical_dict(base)["data"]  # specs written before data.mixture keep their hash
    for mixture in ("{kind: temperature, mix_temperature: 3.3}", "{kind: unimax, max_epochs: 4}",
                    "{kind: online, every_tokens: 64k, reference_loss: {stdlib: 2.5}, min_weight: 0.05, max_weight: 0.9}"):
        mixed = load_spec_text(MINIMAL, overrides=[f"data.mixture={mixture}"])
        assert spec_hash(mixed) != spec_hash(base)
        assert load_spec_text(canonical_yaml(mixed)) == mixed
    for bad, says in [("{kind: online, every_tokens: 1k, min_weight: 0.5, max_weight: 0.2}", "max_weight"),
                      ("{kind: online, every_tokens: 1k, reference_loss: {web: 1.0}}", "'web'"),
                      ("{kind: temperature, mix_temperature: 0}", "mix_temperature")]:
        with pytest.raises(SpecErrors, match=says):
            load_spec_text(MINIMAL, overrides=[f"data.mixture={bad}"])


def test_transforms_enter_the_hash_only_when_set():
    import pytest
    from tabula.schemas.errors import SpecErrors

    base = load_spec_text(MINIMAL)
    assert "transforms" not in canonical_dict(base)["data"]
    fim = load_spec_text(MINIMAL, overrides=["data.transforms=[{kind: fim, rate: 0.9, spm_rate: 0.5}, {kind: noise, case: 0.1}]"])
    assert spec_hash(fim) != spec_hash(base) and load_spec_text(canonical_yaml(fim)) == fim
    with pytest.raises(SpecErrors, match="'web'"):
        load_spec_text(MINIMAL, overrides=["data.transforms=[{kind: fim, sources: [web]}]"])
